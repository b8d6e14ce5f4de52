import CloudAgentProtocol

/// A session's MCP server as the runtime hands it to the agent: its secrets resolved from the
/// agent's environment (the session's secrets are there under their own names).
public struct MCPServer: Sendable, Equatable {
    public enum Transport: Sendable, Equatable {
        case stdio(command: String, args: [String], env: [String: String])
        case http(url: String, headers: [String: String])
    }

    public var name: String
    public var transport: Transport
    /// The names of `env` / `headers` entries whose value is a session secret, with the secret's name.
    public var secretEntries: [String: String]

    public init(name: String, transport: Transport, secretEntries: [String: String] = [:]) {
        self.name = name
        self.transport = transport
        self.secretEntries = secretEntries
    }

    public var isHTTP: Bool { if case .http = transport { true } else { false } }

    /// The servers of an execute command's `mcpServers` (`{NAME: {command, args?, env?} | {url,
    /// headers?}}`, validated by the control plane), sorted by name; a `{"secret": NAME}` value
    /// takes `environment[NAME]`.
    public static func servers(_ json: JSONValue?, environment: [String: String]) -> [MCPServer] {
        guard case .object(let servers)? = json else { return [] }
        return servers.keys.sorted().compactMap { name -> MCPServer? in
            guard case .object(let server) = servers[name]! else { return nil }
            var secrets: [String: String] = [:]
            func values(_ value: JSONValue?) -> [String: String] {
                guard case .object(let entries)? = value else { return [:] }
                var result: [String: String] = [:]
                for (key, value) in entries {
                    if let text = value.stringValue {
                        result[key] = text
                    } else if let secret = value["secret"]?.stringValue {
                        secrets[key] = secret
                        result[key] = environment[secret] ?? ""
                    }
                }
                return result
            }
            if let url = server["url"]?.stringValue {
                let headers = values(server["headers"])
                return MCPServer(name: name, transport: .http(url: url, headers: headers), secretEntries: secrets)
            }
            guard let command = server["command"]?.stringValue else { return nil }
            let args = (server["args"]?.arrayValue ?? []).compactMap(\.stringValue)
            let env = values(server["env"])
            return MCPServer(name: name, transport: .stdio(command: command, args: args, env: env), secretEntries: secrets)
        }
    }

    /// Claude Code's `--mcp-config` file: `{"mcpServers": {NAME: {type: stdio, command, args,
    /// env} | {type: http, url, headers}}}`.
    public static func claudeConfig(_ servers: [MCPServer]) -> String {
        var entries: [String: JSONValue] = [:]
        for server in servers {
            switch server.transport {
            case .stdio(let command, let args, let env):
                entries[server.name] = [
                    "type": "stdio", "command": .string(command), "args": .array(args.map { .string($0) }), "env": .object(env.mapValues { .string($0) }),
                ]
            case .http(let url, let headers):
                entries[server.name] = ["type": "http", "url": .string(url), "headers": .object(headers.mapValues { .string($0) })]
            }
        }
        return JSONText.encode(["mcpServers": .object(entries)])
    }

    /// ACP's `mcpServers` of `session/new` and `session/load`: stdio ones always, HTTP ones when
    /// the agent said it takes them (`agentCapabilities.mcpCapabilities.http`); the names of
    /// those left out.
    public static func acpServers(_ servers: [MCPServer], http: Bool) -> (servers: JSONValue, leftOut: [String]) {
        var list: [JSONValue] = []
        var leftOut: [String] = []
        func pairs(_ values: [String: String]) -> JSONValue {
            .array(values.keys.sorted().map { ["name": .string($0), "value": .string(values[$0]!)] })
        }
        for server in servers {
            switch server.transport {
            case .stdio(let command, let args, let env):
                list.append(["name": .string(server.name), "command": .string(command), "args": .array(args.map { .string($0) }), "env": pairs(env)])
            case .http(let url, let headers):
                guard http else {
                    leftOut.append(server.name)
                    continue
                }
                list.append(["type": "http", "name": .string(server.name), "url": .string(url), "headers": pairs(headers)])
            }
        }
        return (.array(list), leftOut)
    }

    /// Codex's `mcp_servers` as `-c` overrides. A secret reaches the server by name, never on the
    /// command line: an `env` entry named as its secret is forwarded from Codex's environment
    /// (`env_vars`), a header from the secret's variable (`env_http_headers`). An `env` entry
    /// under another name than its secret's is given by value (`env`). Each is `required`: Codex
    /// starts its thread once the server is up (else its tools would miss the first turn), and a
    /// server that cannot start fails the execution, saying which.
    public static func codexOverrides(_ servers: [MCPServer]) -> [String] {
        var arguments: [String] = []
        for server in servers {
            let key = "mcp_servers.\(server.name)"
            arguments += ["-c", "\(key).required=true"]
            switch server.transport {
            case .stdio(let command, let args, let env):
                arguments += ["-c", "\(key).command=\(AgentInvocations.toml(command))"]
                arguments += ["-c", "\(key).args=[\(args.map(AgentInvocations.toml).joined(separator: ", "))]"]
                let forwarded = env.keys.sorted().filter { server.secretEntries[$0] == $0 }
                let given = env.keys.sorted().filter { server.secretEntries[$0] != $0 }
                if !given.isEmpty {
                    arguments += [
                        "-c", "\(key).env={\(given.map { "\(AgentInvocations.toml($0)) = \(AgentInvocations.toml(env[$0]!))" }.joined(separator: ", "))}",
                    ]
                }
                if !forwarded.isEmpty {
                    arguments += ["-c", "\(key).env_vars=[\(forwarded.map(AgentInvocations.toml).joined(separator: ", "))]"]
                }
            case .http(let url, let headers):
                arguments += ["-c", "\(key).url=\(AgentInvocations.toml(url))"]
                let fromSecrets = headers.keys.sorted().filter { server.secretEntries[$0] != nil }
                let plain = headers.keys.sorted().filter { server.secretEntries[$0] == nil }
                if !plain.isEmpty {
                    arguments += [
                        "-c",
                        "\(key).http_headers={\(plain.map { "\(AgentInvocations.toml($0)) = \(AgentInvocations.toml(headers[$0]!))" }.joined(separator: ", "))}",
                    ]
                }
                if !fromSecrets.isEmpty {
                    arguments += [
                        "-c",
                        "\(key).env_http_headers={\(fromSecrets.map { "\(AgentInvocations.toml($0)) = \(AgentInvocations.toml(server.secretEntries[$0]!))" }.joined(separator: ", "))}",
                    ]
                }
            }
        }
        return arguments
    }
}
