"""The gateway run from central: configurations it applies, diagnostics it answers, and the
router that hands each command on the commands topic to the part that carries it out."""
