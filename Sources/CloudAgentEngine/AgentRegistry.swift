import CloudAgentAgents
import CloudAgentCore
import CloudAgentProtocol
import CloudAgentSandbox
import Foundation
import Logging
import Synchronization

/// One agent sessions may name, as `GET /v1/agents` shows it.
public struct AgentEntry: Sendable, Equatable {
    public var name: String
    public var kind: AgentKind
    /// Where its executable is (the runtime itself for `scripted`); nil when it was not found.
    public var binary: String?
    public var version: String?
    public var available: Bool
    /// Why it is not available (for the 400 that names it).
    public var unavailableReason: String?
    /// What the runtime is told to run (nil when unavailable).
    public var launch: AgentLaunch?
    /// How to ask the binary its version, when it is not known yet.
    package var versionProbe: [String]?

    package var json: JSONValue {
        var object: [String: JSONValue] = [
            "name": .string(name), "kind": .string(kind.rawValue), "binary": JSONValue(binary), "version": JSONValue(version),
            "available": .bool(available),
        ]
        if let unavailableReason { object["reason"] = .string(unavailableReason) }
        return .object(object)
    }
}

/// The agents of this server, resolved once at start: `scripted` (always), the real agents whose
/// binary is at `CLOUD_AGENT_<NAME>_BIN` or on PATH (their `--version` probed), and the `command`
/// agents of `CLOUD_AGENT_AGENTS_FILE`.
public struct AgentRegistry: Sendable {
    private let resolved: [AgentEntry]
    /// Versions probed so far, by agent name.
    private let probed = VersionBook()

    public init(entries: [AgentEntry]) {
        self.resolved = entries.sorted { $0.name < $1.name }
    }

    /// The agents, with the versions probed so far.
    public var entries: [AgentEntry] {
        let versions = probed.versions
        return resolved.map { entry in
            var entry = entry
            if entry.version == nil { entry.version = versions[entry.name] }
            return entry
        }
    }

    /// Asks each available agent whose version is not known yet for it (`--version`), all at
    /// once, each bounded to 10 s; the server does not wait for this to start. Idempotent.
    public func probeVersions(environment: [String: String], logger: Logger) async {
        await probed.probeOnce {
            await withTaskGroup(of: (String, String?).self) { group in
                for entry in resolved where entry.available && entry.version == nil {
                    guard let binary = entry.binary, let arguments = entry.versionProbe else { continue }
                    group.addTask { (entry.name, await ProgramProbe.firstLine(of: [binary] + arguments, environment: environment)) }
                }
                for await (name, version) in group {
                    if let version { probed.record(version, for: name) }
                    logger.info("agent version probed", metadata: ["agent": .string(name), "version": .string(version ?? "-")])
                }
            }
        }
    }

    /// Only the built-in scripted agent.
    public static func scriptedOnly(runtimeExecutable: String) -> AgentRegistry {
        AgentRegistry(entries: [scripted(runtimeExecutable: runtimeExecutable)])
    }

    package static func scripted(runtimeExecutable: String) -> AgentEntry {
        AgentEntry(
            name: AgentKind.scripted.rawValue, kind: .scripted, binary: runtimeExecutable, version: "built-in", available: true,
            launch: AgentLaunch(kind: AgentKind.scripted.rawValue)
        )
    }

    public struct AgentsFileError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Resolves every agent (where its binary is; versions come later, from `probeVersions`).
    /// An unreadable or invalid agents file is an error (the server does not start); a real
    /// agent that is not found is listed as unavailable.
    public static func resolve(
        agentsFile: String?, environment: [String: String], runtimeExecutable: String, logger: Logger
    ) throws -> AgentRegistry {
        var entries = [scripted(runtimeExecutable: runtimeExecutable)]
        let path = environment["PATH"]
        for kind in AgentKind.realAgents {
            guard let name = kind.binaryName, let variable = kind.binaryVariable else { continue }
            let configured = environment[variable].flatMap { $0.isEmpty ? nil : $0 }
            let binary = Self.locate(configured ?? name, path: path)
            guard let binary else {
                let reason =
                    configured.map { "\(variable)=\($0) is not an executable file" }
                    ?? "\(name) was not found on PATH (set \(variable) to its path)"
                entries.append(AgentEntry(name: kind.rawValue, kind: kind, available: false, unavailableReason: reason))
                continue
            }
            // OpenCode and Kilo are driven over ACP (`opencode acp`, `kilo acp`).
            let acp = kind == .opencode || kind == .kilo
            entries.append(
                AgentEntry(
                    name: kind.rawValue, kind: kind, binary: binary, version: nil, available: true,
                    launch: AgentLaunch(kind: kind.rawValue, binary: binary, arguments: acp ? ["acp"] : nil, protocol: acp ? AgentLaunch.acp : nil),
                    versionProbe: ["--version"]
                ))
        }
        if let agentsFile {
            let data: Data
            do {
                data = try Data(contentsOf: URL(fileURLWithPath: agentsFile))
            } catch {
                throw AgentsFileError(description: "cannot read the agents file \(agentsFile): \(error.localizedDescription)")
            }
            let declarations: [CommandAgentDeclaration]
            do {
                declarations = try AgentsFile.parse(data)
            } catch {
                throw AgentsFileError(description: "agents file \(agentsFile): \(error)")
            }
            for declaration in declarations {
                var timeoutMs: Int64?
                if let timeout = declaration.timeout {
                    do {
                        timeoutMs = try DurationText.milliseconds(timeout)
                    } catch {
                        throw AgentsFileError(description: "agents file \(agentsFile): agent \(declaration.name): timeout \"\(timeout)\": \(error)")
                    }
                }
                guard let binary = Self.locate(declaration.executable, path: path) else {
                    entries.append(
                        AgentEntry(
                            name: declaration.name, kind: declaration.kind, available: false,
                            unavailableReason: "\(declaration.executable) is not an executable file or on PATH"
                        ))
                    continue
                }
                let launch =
                    declaration.kind == .acp
                    ? AgentLaunch(
                        kind: AgentKind.acp.rawValue, binary: binary, arguments: declaration.arguments, protocol: AgentLaunch.acp, timeoutMs: timeoutMs)
                    : AgentLaunch(kind: AgentKind.command.rawValue, binary: binary, arguments: declaration.arguments, output: declaration.output.rawValue)
                entries.append(
                    AgentEntry(
                        name: declaration.name, kind: declaration.kind, binary: binary, version: declaration.version, available: true,
                        launch: launch, versionProbe: declaration.versionArguments
                    ))
            }
        }
        let registry = AgentRegistry(entries: entries)
        for entry in registry.entries {
            logger.info(
                "agent resolved",
                metadata: [
                    "agent": .string(entry.name), "available": .stringConvertible(entry.available),
                    "binary": .string(entry.binary ?? "-"), "reason": .string(entry.unavailableReason ?? "-"),
                ])
        }
        return registry
    }

    /// Where `program` is (as a shell finds it), symbolic links resolved so that the sandbox
    /// can expose the real file's directory.
    package static func locate(_ program: String, path: String?) -> String? {
        ExecutableLookup.find(program, path: path).map { URL(fileURLWithPath: $0).resolvingSymlinksInPath().path }
    }

    public func entry(named name: String) -> AgentEntry? {
        entries.first { $0.name == name }
    }

    /// The launch of an available agent.
    public func launch(for name: String) -> AgentLaunch? {
        entry(named: name)?.launch
    }

    /// Throws the 400 naming `name` when it is unknown or unavailable.
    package func requireAvailable(_ name: String) throws {
        guard let entry = entry(named: name) else {
            let known = entries.map(\.name).joined(separator: ", ")
            throw ValidationError(field: "agent", "\"\(name)\" is not a known agent (known: \(known))")
        }
        guard entry.available else {
            throw ValidationError(field: "agent", "\"\(name)\" is not available on this server: \(entry.unavailableReason ?? "not found")")
        }
    }

    /// Refuses MCP servers the agent cannot take (400 naming it). An unknown agent is the
    /// `agent` field's business (`requireAvailable`).
    package func requireMCP(_ servers: [String: MCPServerSpec], agent: String) throws {
        guard !servers.isEmpty, let entry = entry(named: agent) else { return }
        guard let transports = entry.kind.mcpTransports else {
            throw ValidationError(field: "mcpServers", "agent \"\(agent)\" (\(entry.kind.rawValue)) cannot take MCP servers")
        }
        if !transports.http, let http = servers.keys.sorted().first(where: { servers[$0]!.isHTTP }) {
            throw ValidationError(field: "mcpServers.\(http)", "agent \"\(agent)\" cannot take MCP servers over HTTP")
        }
    }

    /// Directories holding the agents' executables and what they run with, for the sandbox to
    /// expose read-only (`supportDirectories`).
    public var binaryDirectories: [String] {
        Array(
            Set(
                entries.flatMap { entry in
                    entry.kind == .scripted ? [] : entry.binary.map(Self.supportDirectories(of:)) ?? []
                })
        ).sorted()
    }

    /// What an operator's `--sandbox-expose` path brings into the sandbox: a program what it runs
    /// with (`supportDirectories`); a directory itself, and when it is a Python venv, the
    /// installation it was made from.
    package static func exposedDirectories(of path: String) -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return [path] }
        guard isDirectory.boolValue else { return supportDirectories(of: path) }
        let python = URL(fileURLWithPath: path).appendingPathComponent("bin/python")
        let venv = FileManager.default.fileExists(atPath: URL(fileURLWithPath: path).appendingPathComponent("pyvenv.cfg").path)
        return venv ? Array(Set([path] + supportDirectories(of: python.path))).sorted() : [path]
    }

    /// What an agent's binary needs to be readable to run: its own directory; the installation
    /// of the interpreter its `#!` line names (`/opt/py/bin/python3` → `/opt/py`); and for a
    /// program in a Python venv (`ROOT/bin/prog` beside `ROOT/pyvenv.cfg`, as `claude-code-acp`
    /// is installed), the venv and the installation it was made from (`home` in pyvenv.cfg).
    /// System directories are there anyway; the sandbox skips them.
    package static func supportDirectories(of binary: String) -> [String] {
        let directory = URL(fileURLWithPath: binary).deletingLastPathComponent()
        var found = [directory.path]
        /// `PREFIX/bin/x` → `PREFIX`; anything else → its directory.
        func installation(of program: URL) -> String {
            let bin = program.resolvingSymlinksInPath().deletingLastPathComponent()
            return bin.lastPathComponent == "bin" ? bin.deletingLastPathComponent().path : bin.path
        }
        let root = directory.deletingLastPathComponent()
        if let config = try? String(contentsOf: root.appendingPathComponent("pyvenv.cfg"), encoding: .utf8) {
            found.append(root.path)
            for line in config.split(separator: "\n") {
                let parts = line.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                if parts.count == 2, parts[0] == "home", parts[1].hasPrefix("/") {
                    found.append(installation(of: URL(fileURLWithPath: parts[1]).appendingPathComponent("python3")))
                }
            }
        }
        if let handle = FileHandle(forReadingAtPath: binary) {
            defer { try? handle.close() }
            let head = String(decoding: (try? handle.read(upToCount: 256)) ?? Data(), as: UTF8.self)
            if head.hasPrefix("#!"), let line = head.dropFirst(2).split(separator: "\n").first,
                let interpreter = line.split(separator: " ").first, interpreter.hasPrefix("/"), !interpreter.hasSuffix("/env")
            {
                found.append(installation(of: URL(fileURLWithPath: String(interpreter))))
            }
        }
        return found
    }

    package var json: JSONValue {
        ["agents": .array(entries.map(\.json))]
    }
}

/// The versions `AgentRegistry.probeVersions` found; probed once per registry.
private final class VersionBook: Sendable {
    private let state = Mutex<(versions: [String: String], probing: Task<Void, Never>?)>(([:], nil))

    package var versions: [String: String] { state.withLock { $0.versions } }

    package func record(_ version: String, for name: String) {
        state.withLock { $0.versions[name] = version }
    }

    /// Runs `probe` the first time; every call waits for that one run to end.
    package func probeOnce(_ probe: @escaping @Sendable () async -> Void) async {
        let task = state.withLock { state -> Task<Void, Never> in
            if let probing = state.probing { return probing }
            let probing = Task { await probe() }
            state.probing = probing
            return probing
        }
        await task.value
    }
}
