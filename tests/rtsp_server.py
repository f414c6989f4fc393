"""A real RTSP camera for the tests: GStreamer's RTSP server (Debian: gir1.2-gst-rtsp-server-1.0,
python3-gi, gstreamer1.0-plugins-good). Runs under the system Python, which has those bindings:

    /usr/bin/python3 tests/rtsp_server.py PORT      # serves rtsp://127.0.0.1:PORT/line

Prints READY once listening. A moving test pattern, 320x240 at 15 frames/s, JPEG over RTP.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port = sys.argv[1]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1"
    " ! videoconvert ! video/x-raw,format=I420 ! jpegenc ! rtpjpegpay name=pay0 pt=26 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/line", factory)
server.attach(None)
print("READY", flush=True)
GLib.MainLoop().run()
