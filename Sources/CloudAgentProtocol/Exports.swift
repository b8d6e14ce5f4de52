// An event frame's data is `JSONValue`: whoever uses the protocol uses it too, with its members
// and `JSONText`. The runtime and the agents module get it from here without linking the core.
@_exported import CloudAgentJSON
