"""Agent software updates: a signed release installed beside the running one, switched by an
atomic symlink, and the launcher that starts whichever release is current (or the previous one
when a new release did not come up healthy)."""
