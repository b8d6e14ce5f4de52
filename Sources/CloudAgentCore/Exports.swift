// `JSONValue` is part of the core's vocabulary (event data, request bodies, views): whoever uses
// the core uses it too, with its members and `JSONText`.
@_exported import CloudAgentJSON
