"""The shared kernel of both programs: the wire contract, the MQTT transport, signing, config
loading, atomic files and service plumbing. It imports no other module of the project."""
