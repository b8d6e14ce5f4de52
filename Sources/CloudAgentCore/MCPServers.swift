import Foundation

/// A value of an MCP server's environment or headers: text, or the value of one of the
/// session's secrets (`{"secret": NAME}`), which only the runtime resolves.
public enum MCPValue: Sendable, Equatable, Codable {
    case text(String)
    case secret(String)

    public var json: JSONValue {
        switch self {
        case .text(let text): .string(text)
        case .secret(let name): ["secret": .string(name)]
        }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self) {
            self = .text(text)
        } else {
            self = .secret(try container.decode([String: String].self)["secret"] ?? "")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .text(let text): try container.encode(text)
        case .secret(let name): try container.encode(["secret": name])
        }
    }
}

/// One MCP server of a session: a program the agent starts inside the session's sandbox
/// (stdio), or a URL it connects to (HTTP).
public enum MCPServerSpec: Sendable, Equatable, Codable {
    case stdio(command: String, args: [String], env: [String: MCPValue])
    case http(url: String, headers: [String: MCPValue])

    public var isHTTP: Bool { if case .http = self { true } else { false } }

    /// The secrets it names.
    public var secretNames: [String] {
        let values: [MCPValue]
        switch self {
        case .stdio(_, _, let env): values = env.keys.sorted().compactMap { env[$0] }
        case .http(_, let headers): values = headers.keys.sorted().compactMap { headers[$0] }
        }
        return values.compactMap { if case .secret(let name) = $0 { name } else { nil } }
    }

    /// As the API shows it (and takes it): `{command, args?, env?}` or `{url, headers?}`.
    public var json: JSONValue {
        switch self {
        case .stdio(let command, let args, let env):
            var object: [String: JSONValue] = ["command": .string(command)]
            if !args.isEmpty { object["args"] = .array(args.map { .string($0) }) }
            if !env.isEmpty { object["env"] = .object(env.mapValues(\.json)) }
            return .object(object)
        case .http(let url, let headers):
            var object: [String: JSONValue] = ["url": .string(url)]
            if !headers.isEmpty { object["headers"] = .object(headers.mapValues(\.json)) }
            return .object(object)
        }
    }

    private enum CodingKeys: String, CodingKey { case command, args, env, url, headers }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        if let url = try container.decodeIfPresent(String.self, forKey: .url) {
            self = .http(url: url, headers: try container.decodeIfPresent([String: MCPValue].self, forKey: .headers) ?? [:])
        } else {
            self = .stdio(
                command: try container.decode(String.self, forKey: .command), args: try container.decodeIfPresent([String].self, forKey: .args) ?? [],
                env: try container.decodeIfPresent([String: MCPValue].self, forKey: .env) ?? [:])
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .stdio(let command, let args, let env):
            try container.encode(command, forKey: .command)
            if !args.isEmpty { try container.encode(args, forKey: .args) }
            if !env.isEmpty { try container.encode(env, forKey: .env) }
        case .http(let url, let headers):
            try container.encode(url, forKey: .url)
            if !headers.isEmpty { try container.encode(headers, forKey: .headers) }
        }
    }
}

extension Limits {
    public static let mcpServers = 20
    public static let mcpArguments = 64
}

extension Validate {
    /// `mcpServers`: `{NAME: {command, args?, env?} | {url, headers?}}`, at most 20, NAME
    /// `[A-Za-z0-9_-]{1,64}`; an `env` or `headers` value is text or `{"secret": NAME}`.
    public static func mcpServers(_ value: JSONValue) throws(ValidationError) -> [String: MCPServerSpec] {
        let field = "mcpServers"
        guard case .object(let servers) = value else { throw ValidationError(field: field, "must be an object of servers by name") }
        guard servers.count <= Limits.mcpServers else { throw ValidationError(field: field, "has \(servers.count) servers; the limit is \(Limits.mcpServers)") }
        var result: [String: MCPServerSpec] = [:]
        for name in servers.keys.sorted() {
            let path = "\(field).\(name)"
            guard isMCPServerName(name) else { throw ValidationError(field: field, "server name '\(name.prefix(80))' must match [A-Za-z0-9_-]{1,64}") }
            guard case .object(let server) = servers[name]! else { throw ValidationError(field: path, "must be {command, args?, env?} or {url, headers?}") }
            if server["url"] != nil {
                if let unknown = server.keys.sorted().first(where: { !["url", "headers"].contains($0) }) {
                    throw ValidationError(field: "\(path).\(unknown)", "is not a field of an HTTP server ({url, headers?})")
                }
                let url = try httpURL(server["url"]!, field: "\(path).url")
                let headers = try mcpValues(server["headers"], field: "\(path).headers", limit: Limits.callbackHeaders, header: true)
                result[name] = .http(url: url, headers: headers)
            } else {
                if let unknown = server.keys.sorted().first(where: { !["command", "args", "env"].contains($0) }) {
                    throw ValidationError(field: "\(path).\(unknown)", "is not a field of a server ({command, args?, env?} or {url, headers?})")
                }
                guard let command = server["command"]?.stringValue else {
                    throw ValidationError(field: "\(path).command", "is required: a program, or give a url")
                }
                try text(command, field: "\(path).command", nonEmpty: true)
                var args: [String] = []
                switch server["args"] {
                case nil, .null?: break
                case .array(let items)?:
                    guard items.count <= Limits.mcpArguments else {
                        throw ValidationError(field: "\(path).args", "has \(items.count) arguments; the limit is \(Limits.mcpArguments)")
                    }
                    for item in items {
                        guard let argument = item.stringValue else { throw ValidationError(field: "\(path).args", "must be an array of strings") }
                        try text(argument, field: "\(path).args", nonEmpty: false)
                        args.append(argument)
                    }
                default: throw ValidationError(field: "\(path).args", "must be an array of strings")
                }
                let env = try mcpValues(server["env"], field: "\(path).env", limit: Limits.variables, header: false)
                result[name] = .stdio(command: command, args: args, env: env)
            }
        }
        return result
    }

    /// An http or https URL with a host, without blanks or control characters.
    static func httpURL(_ value: JSONValue, field: String) throws(ValidationError) -> String {
        guard let url = value.stringValue, url.count <= Limits.urlCharacters, !url.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7F }),
            let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(), ["http", "https"].contains(scheme),
            let host = components.host, !host.isEmpty
        else { throw ValidationError(field: field, "must be an http or https URL") }
        return url
    }

    static func isMCPServerName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count)
            && name.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || byte == 0x5F || byte == 0x2D
            }
    }

    private static func text(_ text: String, field: String, nonEmpty: Bool) throws(ValidationError) {
        guard !nonEmpty || !text.isEmpty else { throw ValidationError(field: field, "must not be empty") }
        guard text.count <= Limits.variableValueCharacters else {
            throw ValidationError(field: field, "is longer than \(Limits.variableValueCharacters) characters")
        }
        guard !text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw ValidationError(field: field, "must not contain control characters")
        }
    }

    private static func mcpValues(_ value: JSONValue?, field: String, limit: Int, header: Bool) throws(ValidationError) -> [String: MCPValue] {
        guard let value, value != .null else { return [:] }
        guard case .object(let entries) = value else { throw ValidationError(field: field, "must be an object of names to text or {\"secret\": NAME}") }
        guard entries.count <= limit else { throw ValidationError(field: field, "has \(entries.count) entries; the limit is \(limit)") }
        var result: [String: MCPValue] = [:]
        for name in entries.keys.sorted() {
            let path = "\(field).\(name)"
            let tokenCharacters = Set("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
            let validName =
                header ? !name.isEmpty && name.count <= Limits.variableNameCharacters && name.allSatisfy { tokenCharacters.contains($0) } : isVariableName(name)
            guard validName else { throw ValidationError(field: path, header ? "is not a valid header name" : "is not a valid variable name") }
            switch entries[name]! {
            case .string(let text):
                try self.text(text, field: path, nonEmpty: false)
                result[name] = .text(text)
            case .object(let reference) where reference.count == 1:
                guard let secret = reference["secret"]?.stringValue, isVariableName(secret) else {
                    throw ValidationError(field: path, "must be text or {\"secret\": NAME} naming one of the session's secrets")
                }
                result[name] = .secret(secret)
            default:
                throw ValidationError(field: path, "must be text or {\"secret\": NAME} naming one of the session's secrets")
            }
        }
        return result
    }
}
