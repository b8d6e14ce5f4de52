import CloudAgentCore
import Foundation
import Testing

/// The limits of the API contract ("POST /v1/sessions", "PATCH /v1/sessions/{id}"): every refusal
/// names its field.
@Suite("Validation: session bodies within the contract's limits")
struct ValidationTests {
    struct Refusal: Sendable, CustomTestStringConvertible {
        var name: String
        var body: JSONValue
        var field: String
        var tooLarge = false
        var testDescription: String { name }
    }

    static func text(_ count: Int, _ character: Character = "a") -> String { String(repeating: character, count: count) }

    /// A valid create body with `extra` fields added.
    static func create(_ extra: [String: JSONValue]) -> JSONValue {
        .object(extra.merging(["prompt": "say hello"]) { value, _ in value })
    }

    static func variables(_ count: Int) -> JSONValue {
        .object(Dictionary(uniqueKeysWithValues: (1...count).map { ("VAR_\($0)", JSONValue.string("v")) }))
    }

    static let longName = "N" + text(128, "x")

    static let createRefusals: [Refusal] = {
        var refusals: [Refusal] = [
            Refusal(name: "prompt missing", body: ["agent": "scripted"], field: "prompt"),
            Refusal(name: "empty body", body: [:], field: "prompt"),
            Refusal(name: "prompt empty", body: ["prompt": ""], field: "prompt"),
            Refusal(name: "prompt only whitespace", body: ["prompt": " \n\t"], field: "prompt"),
            Refusal(name: "prompt not a string", body: ["prompt": 42], field: "prompt"),
            Refusal(name: "prompt of 100,001 characters", body: ["prompt": .string(text(100_001))], field: "prompt", tooLarge: true),
            Refusal(name: "body not an object", body: ["say hello"], field: "body"),
            Refusal(name: "unknown field", body: create(["colour": "blue"]), field: "colour"),
            Refusal(name: "null in create", body: create(["mode": nil]), field: "mode"),
            Refusal(name: "null prompt in create", body: ["prompt": nil], field: "prompt"),
            Refusal(name: "autoCommit not a boolean", body: create(["autoCommit": "yes"]), field: "autoCommit"),
            Refusal(name: "empty agent", body: create(["agent": ""]), field: "agent"),
            Refusal(
                name: "setupCommands: 21 commands", body: create(["setupCommands": .array((1...21).map { .string("echo \($0)") })]), field: "setupCommands"),
            Refusal(name: "setupCommands: a 501-character command", body: create(["setupCommands": ["make", .string(text(501))]]), field: "setupCommands[1]"),
            Refusal(name: "setupCommands not an array", body: create(["setupCommands": "make"]), field: "setupCommands"),
            Refusal(name: "repo without url", body: create(["repo": ["branch": "main"]]), field: "repo.url"),
            Refusal(name: "repo: unknown field", body: create(["repo": ["url": "https://github.com/o/r.git", "ref": "main"]]), field: "repo.ref"),
            Refusal(name: "repo.url with credentials", body: create(["repo": ["url": "https://u:p@host/r.git"]]), field: "repo.url"),
            Refusal(name: "repo.url with a user", body: create(["repo": ["url": "https://u@host/r.git"]]), field: "repo.url"),
            Refusal(name: "repo.url relative path", body: create(["repo": ["url": "relative/path"]]), field: "repo.url"),
            Refusal(name: "repo.url unsupported scheme", body: create(["repo": ["url": "ftp://host/r.git"]]), field: "repo.url"),
            Refusal(name: "repo.url starting with -", body: create(["repo": ["url": "-uhost:r"]]), field: "repo.url"),
            Refusal(name: "idleTimeoutMs 0", body: create(["idleTimeoutMs": 0]), field: "idleTimeoutMs"),
            Refusal(name: "idleTimeoutMs negative", body: create(["idleTimeoutMs": -1]), field: "idleTimeoutMs"),
            Refusal(name: "idleTimeoutMs 1.5", body: create(["idleTimeoutMs": .number(1.5)]), field: "idleTimeoutMs"),
            Refusal(name: "idleTimeoutMs \"10\"", body: create(["idleTimeoutMs": "10"]), field: "idleTimeoutMs"),
            Refusal(name: "idleTimeoutMs above 90 days", body: create(["idleTimeoutMs": .number(Double(days(90) + 1))]), field: "idleTimeoutMs"),
            Refusal(name: "callback.url not http", body: create(["callback": ["url": "file:///etc/passwd"]]), field: "callback.url"),
            Refusal(name: "a name both envVar and secret", body: create(["envVars": ["KEY": "a"], "secrets": ["KEY": "b"]]), field: "secrets.KEY"),
        ]
        let stdio: JSONValue = ["command": "python3"]
        refusals += [
            Refusal(name: "mcpServers not an object", body: create(["mcpServers": ["python3"]]), field: "mcpServers"),
            Refusal(
                name: "mcpServers: 21 servers",
                body: create(["mcpServers": .object(Dictionary(uniqueKeysWithValues: (1...21).map { ("s\($0)", stdio) }))]), field: "mcpServers"),
            Refusal(name: "mcpServers: a name with a dot", body: create(["mcpServers": ["a.b": stdio]]), field: "mcpServers"),
            Refusal(name: "mcpServers: a 65-character name", body: create(["mcpServers": [.init(stringLiteral: text(65)): stdio]]), field: "mcpServers"),
            Refusal(name: "mcpServers: neither command nor url", body: create(["mcpServers": ["s": ["args": ["x"]]]]), field: "mcpServers.s.command"),
            Refusal(name: "mcpServers: empty command", body: create(["mcpServers": ["s": ["command": ""]]]), field: "mcpServers.s.command"),
            Refusal(name: "mcpServers: unknown field", body: create(["mcpServers": ["s": ["command": "x", "cwd": "/"]]]), field: "mcpServers.s.cwd"),
            Refusal(
                name: "mcpServers: command and url", body: create(["mcpServers": ["s": ["command": "x", "url": "https://mcp.example.com"]]]),
                field: "mcpServers.s.command"),
            Refusal(name: "mcpServers: args not strings", body: create(["mcpServers": ["s": ["command": "x", "args": [1]]]]), field: "mcpServers.s.args"),
            Refusal(
                name: "mcpServers: 65 args", body: create(["mcpServers": ["s": ["command": "x", "args": .array((0...64).map { _ in "a" })]]]),
                field: "mcpServers.s.args"),
            Refusal(name: "mcpServers: a control character", body: create(["mcpServers": ["s": ["command": "x\ny"]]]), field: "mcpServers.s.command"),
            Refusal(name: "mcpServers: env name 1A", body: create(["mcpServers": ["s": ["command": "x", "env": ["1A": "v"]]]]), field: "mcpServers.s.env.1A"),
            Refusal(
                name: "mcpServers: env value a number", body: create(["mcpServers": ["s": ["command": "x", "env": ["A": 1]]]]), field: "mcpServers.s.env.A"),
            Refusal(
                name: "mcpServers: env secret of a bad name", body: create(["mcpServers": ["s": ["command": "x", "env": ["A": ["secret": "a-b"]]]]]),
                field: "mcpServers.s.env.A"),
            Refusal(
                name: "mcpServers: env object with more than a secret",
                body: create(["mcpServers": ["s": ["command": "x", "env": ["A": ["secret": "A", "x": "y"]]]]]), field: "mcpServers.s.env.A"),
            Refusal(name: "mcpServers: url not http", body: create(["mcpServers": ["s": ["url": "file:///etc/passwd"]]]), field: "mcpServers.s.url"),
            Refusal(
                name: "mcpServers: header name with a space", body: create(["mcpServers": ["s": ["url": "https://h", "headers": ["A B": "v"]]]]),
                field: "mcpServers.s.headers.A B"),
            Refusal(
                name: "mcpServers: http server with args", body: create(["mcpServers": ["s": ["url": "https://h", "args": ["x"]]]]), field: "mcpServers.s.args"),
        ]
        for metacharacter in [";", "|", "$", "`", " ", "&", "\n"] {
            let url = "https://github.com/o/r\(metacharacter)x.git"
            refusals.append(Refusal(name: "repo.url with \(metacharacter.debugDescription)", body: create(["repo": ["url": .string(url)]]), field: "repo.url"))
        }
        for branch in ["a b", "-x", "a..b", text(256), "", "a~1", "a:b", "feature/", "x.lock", "ä"] {
            let name = branch.count > 20 ? "\(branch.count) characters" : branch.debugDescription
            refusals.append(
                Refusal(
                    name: "repo.branch \(name)", body: create(["repo": ["url": "https://github.com/o/r.git", "branch": .string(branch)]]), field: "repo.branch"
                ))
        }
        for field in ["envVars", "secrets"] {
            refusals += [
                Refusal(name: "\(field): 51 entries", body: create([field: variables(51)]), field: field),
                Refusal(name: "\(field): name 1A", body: create([field: ["1A": "x"]]), field: "\(field).1A"),
                Refusal(name: "\(field): name A-B", body: create([field: ["A-B": "x"]]), field: "\(field).A-B"),
                Refusal(name: "\(field): empty name", body: create([field: ["": "x"]]), field: "\(field)."),
                Refusal(name: "\(field): 129-character name", body: create([field: [longName: "x"]]), field: "\(field).\(longName)"),
                Refusal(name: "\(field): value of 4097 characters", body: create([field: ["TOKEN": .string(text(4097))]]), field: "\(field).TOKEN"),
                Refusal(name: "\(field): value not a string", body: create([field: ["TOKEN": 1]]), field: "\(field).TOKEN"),
                Refusal(name: "\(field): not an object", body: create([field: ["A=1"]]), field: field),
            ]
            for reserved in ["HOME", "PATH", "SESSION_ID", "SESSION_HOME"] {
                refusals.append(Refusal(name: "\(field): reserved \(reserved)", body: create([field: [reserved: "/x"]]), field: "\(field).\(reserved)"))
            }
        }
        return refusals
    }()

    @Test("mcpServers: stdio and HTTP servers, their env and headers as text or a secret by name, 20 at most, read back as given")
    func mcpServers() throws {
        let servers: JSONValue = [
            "notes": ["command": "/opt/mcp/bin/notes", "args": ["--root", "."], "env": ["NOTES_TOKEN": ["secret": "NOTES_TOKEN"], "MODE": "fast"]],
            "docs_2-b": ["url": "https://mcp.example.com/mcp", "headers": ["Authorization": ["secret": "DOCS_KEY"], "X-Team": "core"]],
            "bare": ["command": "mcp-bare"],
        ]
        let input = try SessionInput.parseCreate(Self.create(["mcpServers": servers]))
        guard case .set(let parsed) = input.mcpServers else {
            Issue.record("not parsed: \(input.mcpServers)")
            return
        }
        #expect(
            parsed["notes"]
                == .stdio(command: "/opt/mcp/bin/notes", args: ["--root", "."], env: ["NOTES_TOKEN": .secret("NOTES_TOKEN"), "MODE": .text("fast")]))
        #expect(parsed["docs_2-b"] == .http(url: "https://mcp.example.com/mcp", headers: ["Authorization": .secret("DOCS_KEY"), "X-Team": .text("core")]))
        #expect(parsed["notes"]?.secretNames == ["NOTES_TOKEN"])
        #expect(JSONValue.object(parsed.mapValues(\.json)) == servers)
        // Stored as the session's spec, and read back the same.
        var spec = SessionSpec(prompt: "p")
        spec.mcpServers = parsed
        let stored = try JSONDecoder().decode(SessionSpec.self, from: try JSONEncoder().encode(spec))
        #expect(stored.mcpServers == parsed)
        let twenty = JSONValue.object(Dictionary(uniqueKeysWithValues: (1...20).map { ("s\($0)", ["command": "x"] as JSONValue) }))
        #expect(throws: Never.self) { try SessionInput.parseCreate(Self.create(["mcpServers": twenty])) }
        #expect(try SessionInput.parsePatch(["mcpServers": nil]).mcpServers == .clear)
    }

    @Test("every broken limit of a create body is refused, naming the field", arguments: createRefusals)
    func createRefusal(_ refusal: Refusal) {
        let error = #expect(throws: ValidationError.self) { try SessionInput.parseCreate(refusal.body) }
        #expect(error?.field == refusal.field)
        #expect(error?.tooLarge == refusal.tooLarge)
    }

    static let patchRefusals: [Refusal] = [
        Refusal(name: "null prompt", body: ["prompt": nil], field: "prompt"),
        Refusal(name: "empty prompt", body: ["prompt": ""], field: "prompt"),
        Refusal(name: "prompt of 100,001 characters", body: ["prompt": .string(text(100_001))], field: "prompt", tooLarge: true),
        Refusal(name: "unknown field", body: ["idleTimeout": 1000], field: "idleTimeout"),
        Refusal(name: "unknown null field", body: ["colour": nil], field: "colour"),
        Refusal(name: "idleTimeoutMs 0", body: ["idleTimeoutMs": 0], field: "idleTimeoutMs"),
        Refusal(name: "idleTimeoutMs \"10\"", body: ["idleTimeoutMs": "10"], field: "idleTimeoutMs"),
        Refusal(name: "envVars reserved PATH", body: ["envVars": ["PATH": "/bin"]], field: "envVars.PATH"),
        Refusal(name: "setupCommands: 21 commands", body: ["setupCommands": .array((1...21).map { .string("echo \($0)") })], field: "setupCommands"),
    ]

    @Test("a patch body is held to the same limits, and a prompt cannot be cleared", arguments: patchRefusals)
    func patchRefusal(_ refusal: Refusal) {
        let error = #expect(throws: ValidationError.self) { try SessionInput.parsePatch(refusal.body) }
        #expect(error?.field == refusal.field)
        #expect(error?.tooLarge == refusal.tooLarge)
    }

    @Test("values exactly at each limit are accepted")
    func limitsAreInclusive() throws {
        let commands: [JSONValue] = (1...19).map { .string("echo \($0)") } + [.string(Self.text(500))]
        let longestName = "N" + Self.text(127, "x")
        let body: JSONValue = [
            "prompt": .string(Self.text(100_000)),
            "envVars": Self.variables(50),
            "secrets": [longestName: .string(Self.text(4096))],
            "setupCommands": .array(commands),
            "repo": ["url": "https://github.com/o/r.git", "branch": .string(Self.text(255))],
            "idleTimeoutMs": .number(Double(days(90))),
        ]
        let input = try SessionInput.parseCreate(body)
        #expect(input.prompt == .set(Self.text(100_000)))
        guard case .set(let envVars) = input.envVars, case .set(let secrets) = input.secrets,
            case .set(let setupCommands) = input.setupCommands, case .set(let repo) = input.repo
        else {
            Issue.record("expected every field set: \(input)")
            return
        }
        #expect(envVars.count == 50)
        #expect(secrets[longestName]?.count == 4096)
        #expect(setupCommands.count == 20)
        #expect(repo.branch?.count == 255)
        #expect(input.idleTimeoutMs == .set(days(90)))
    }

    @Test(
        "repository URLs of every supported kind are accepted",
        arguments: [
            "file:///tmp/r", "/abs/path", "git@github.com:o/r.git", "https://github.com/o/r.git",
            "ssh://git@github.com/o/r.git", "http://localhost:8080/r.git", "git://host/r.git",
        ]
    )
    func validRepoURL(url: String) throws {
        let input = try SessionInput.parseCreate(Self.create(["repo": ["url": .string(url), "branch": "feature/x-1.2_b", "token": "ghp_secret"]]))
        guard case .set(let repo) = input.repo else {
            Issue.record("expected repo set: \(input.repo)")
            return
        }
        #expect(repo.url == url)
        #expect(repo.branch == "feature/x-1.2_b")
        #expect(repo.token == "ghp_secret")
    }

    @Test("a full, valid create body parses into its fields")
    func validCreate() throws {
        let body: JSONValue = [
            "prompt": "say hello", "agent": "scripted", "mode": "code", "model": "m-1",
            "envVars": ["ANTHROPIC_BASE_URL": "http://127.0.0.1:9", "_private": ""],
            "secrets": ["ANTHROPIC_API_KEY": "sk-1"],
            "setupCommands": ["npm ci", "make build"], "autoCommit": true,
            "callback": ["url": "https://hooks.example.com/done", "headers": ["Authorization": "Bearer x"]],
            "idleTimeoutMs": 60_000,
        ]
        let input = try SessionInput.parseCreate(body)
        #expect(input.prompt == .set("say hello"))
        #expect(input.agent == .set("scripted"))
        #expect(input.mode == .set("code"))
        #expect(input.model == .set("m-1"))
        #expect(input.envVars == .set(["ANTHROPIC_BASE_URL": "http://127.0.0.1:9", "_private": ""]))
        #expect(input.secrets == .set(["ANTHROPIC_API_KEY": "sk-1"]))
        #expect(input.setupCommands == .set(["npm ci", "make build"]))
        #expect(input.autoCommit == .set(true))
        guard case .set(let callback) = input.callback else {
            Issue.record("expected callback set: \(input.callback)")
            return
        }
        #expect(callback.url == "https://hooks.example.com/done")
        #expect(callback.headers == ["Authorization": "Bearer x"])
        #expect(input.idleTimeoutMs == .set(60_000))
        #expect(input.repo == .unchanged)
    }

    @Test("PATCH: null clears, {} sets an empty collection, an absent field is unchanged")
    func patchFieldUpdates() throws {
        let cleared = try SessionInput.parsePatch(["envVars": nil, "idleTimeoutMs": nil, "repo": nil])
        #expect(cleared.envVars == .clear)
        #expect(cleared.idleTimeoutMs == .clear)
        #expect(cleared.repo == .clear)
        #expect(cleared.secrets == .unchanged)

        let emptied = try SessionInput.parsePatch(["envVars": [:], "setupCommands": []])
        #expect(emptied.envVars == .set([:]))
        #expect(emptied.setupCommands == .set([]))

        let untouched = try SessionInput.parsePatch([:])
        #expect(untouched == SessionInput())
        #expect(untouched.envVars == .unchanged)
        #expect(untouched.prompt == .unchanged)
    }

    @Test("after initiate only idleTimeoutMs and budget may change")
    func changesOnlyLiveFields() throws {
        #expect(try SessionInput.parsePatch(["idleTimeoutMs": 120_000]).changesOnlyLiveFields)
        #expect(try SessionInput.parsePatch(["idleTimeoutMs": nil]).changesOnlyLiveFields)
        #expect(try SessionInput.parsePatch([:]).changesOnlyLiveFields)
        #expect(try !SessionInput.parsePatch(["idleTimeoutMs": 120_000, "model": "m-2"]).changesOnlyLiveFields)
        #expect(try !SessionInput.parsePatch(["envVars": [:]]).changesOnlyLiveFields)
    }
}
