import CloudAgentCore

/// The two wire APIs the server speaks.
public enum ModelAPI: String, Sendable, Codable {
    case anthropicMessages = "anthropic-messages"
    case openAIResponses = "openai-responses"
}

/// A tool a request offers the model.
public struct OfferedTool: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Called with a JSON object (Anthropic tools, Responses `function` tools).
        case function
        /// Called with free text (Responses `custom` tools, e.g. Codex's JavaScript `exec`).
        case custom
        /// A tool the provider runs itself (`web_search`, …): never called by the script.
        case builtin
    }

    public var name: String
    public var kind: Kind
    public var description: String
    /// The JSON schema of a function tool's input.
    public var parameters: JSONValue
    /// The Responses `namespace` group it was offered in (Codex's MCP servers: `mcp__SERVER`).
    public var namespace: String?

    public init(name: String, kind: Kind, description: String = "", parameters: JSONValue = .null, namespace: String? = nil) {
        self.namespace = namespace
        self.name = name
        self.kind = kind
        self.description = description
        self.parameters = parameters
    }

    /// The property names of a function tool's input schema.
    var properties: [String: JSONValue] { parameters.objectValue?["properties"]?.objectValue ?? [:] }
}

/// A model request, reduced to what the script and the record need.
public struct ModelRequest: Sendable, Equatable {
    public var api: ModelAPI
    public var model: String
    public var stream: Bool
    public var tools: [OfferedTool]
    /// Anthropic `messages`; OpenAI `input` items (without `additional_tools` items, whose
    /// tools are in `tools`).
    public var messages: [JSONValue]
    /// The agent's conversation id when its headers carry one (Claude Code's session id, Codex's
    /// thread id).
    public var conversationID: String?
    /// A rough token count of the body, for the usage figures.
    public var inputTokens: Int

    /// A main request is one of the agent's own conversation turns: it offers tools. Title
    /// generation, quota probes and other small-model calls offer none.
    public var isMain: Bool { tools.contains { $0.kind != .builtin } }

    public init(
        api: ModelAPI, model: String, stream: Bool, tools: [OfferedTool], messages: [JSONValue],
        conversationID: String? = nil, inputTokens: Int = 1
    ) {
        self.api = api
        self.model = model
        self.stream = stream
        self.tools = tools
        self.messages = messages
        self.conversationID = conversationID
        self.inputTokens = inputTokens
    }

    /// Reads a `POST /v1/messages` body.
    public init(anthropic body: JSONValue, conversationID: String? = nil, bodyBytes: Int = 0) throws(RequestError) {
        guard case .object(let fields) = body else { throw RequestError("the body must be a JSON object") }
        guard case .array(let messages)? = fields["messages"] else { throw RequestError("messages: an array is required") }
        var tools: [OfferedTool] = []
        for tool in fields["tools"].flatMap(Self.array) ?? [] {
            guard let object = tool.objectValue, let name = object["name"]?.stringValue else { continue }
            // Client tools have an input schema; server tools (web_search_…) have a versioned type instead.
            let schema = object["input_schema"]
            tools.append(
                OfferedTool(
                    name: name, kind: schema == nil ? .builtin : .function,
                    description: object["description"]?.stringValue ?? "", parameters: schema ?? .null
                ))
        }
        self.init(
            api: .anthropicMessages, model: fields["model"]?.stringValue ?? "", stream: fields["stream"]?.boolValue ?? false,
            tools: tools, messages: messages, conversationID: conversationID, inputTokens: max(1, bodyBytes / 4)
        )
    }

    /// Reads a `POST /v1/responses` body.
    public init(openAI body: JSONValue, conversationID: String? = nil, bodyBytes: Int = 0) throws(RequestError) {
        guard case .object(let fields) = body else { throw RequestError("the body must be a JSON object") }
        var tools = Self.responsesTools(fields["tools"].flatMap(Self.array) ?? [])
        var messages: [JSONValue] = []
        switch fields["input"] {
        case .string(let text)?:
            messages = [["role": "user", "content": .string(text)]]
        case .array(let items)?:
            for item in items {
                // Codex delivers part of its tools as an input item rather than in `tools`.
                if item.objectValue?["type"]?.stringValue == "additional_tools" {
                    tools += Self.responsesTools(item.objectValue?["tools"].flatMap(Self.array) ?? [])
                } else {
                    messages.append(item)
                }
            }
        case nil, .null?:
            break
        default:
            throw RequestError("input: a string or an array is required")
        }
        self.init(
            api: .openAIResponses, model: fields["model"]?.stringValue ?? "", stream: fields["stream"]?.boolValue ?? false,
            tools: tools, messages: messages, conversationID: conversationID, inputTokens: max(1, bodyBytes / 4)
        )
    }

    private static func array(_ value: JSONValue) -> [JSONValue]? {
        if case .array(let array) = value { array } else { nil }
    }

    /// Responses tools: `function`, `custom`, provider tools, and `namespace` groups of them.
    private static func responsesTools(_ values: [JSONValue], namespace: String? = nil) -> [OfferedTool] {
        values.flatMap { value -> [OfferedTool] in
            guard let object = value.objectValue else { return [] }
            let type = object["type"]?.stringValue ?? "function"
            let name = object["name"]?.stringValue ?? type
            let description = object["description"]?.stringValue ?? ""
            switch type {
            case "namespace":
                return responsesTools(object["tools"].flatMap(array) ?? [], namespace: name)
            case "function":
                return [OfferedTool(name: name, kind: .function, description: description, parameters: object["parameters"] ?? .null, namespace: namespace)]
            case "custom":
                return [OfferedTool(name: name, kind: .custom, description: description, parameters: object["format"] ?? .null, namespace: namespace)]
            default:
                return [OfferedTool(name: name, kind: .builtin, description: description)]
            }
        }
    }
}

/// A request body the server cannot use; answered with 400 in the API's error shape.
public struct RequestError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
