"""What every part of Herald shares, free of any framework: settings, topic names, the contract's enums,
dead-letter headers, where local state lives, and one way to make a Kafka producer.

The Faust shell (``streams/``), the sinks (``sinks/``), the API (``api/``) and the tools all import from
here and never from each other, so a sink or the API can run without Faust or the installer.
"""
