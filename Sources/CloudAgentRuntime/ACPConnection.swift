import CloudAgentAgents
import CloudAgentProtocol
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// One ACP agent process and the JSON-RPC connection over its stdio, for as long as the runtime
/// lives (or until the agent exits or is killed).
///
/// The connection sends requests and matches the agent's answers to them by id; everything else
/// the agent writes goes to `handler`: session updates, its requests (answered with what the
/// handler returns; methods the client does not serve get method-not-found), lines that are not
/// JSON-RPC, stderr, overlong lines, and finally its exit. Each of the agent's requests is
/// answered in a task of its own, so that a slow decision never holds up its updates.
actor ACPConnection {
    enum Inbound: Sendable {
        case update(JSONValue, raw: String)
        case permission(JSONValue, raw: String)
        /// `elicitation/create` (form mode): the agent asks the user to fill a form.
        case elicitation(JSONValue, raw: String)
        /// A line of stdout that is not JSON-RPC, or a line of stderr.
        case output(AgentStream, String)
        /// A stdout line of this many bytes was dropped.
        case overlong(Int)
        case exited(AgentTermination)
    }

    /// Answers `.permission` and `.elicitation` with their results; nil for the rest.
    typealias Handler = @Sendable (Inbound) async -> JSONValue?

    enum Failure: Error, Sendable, CustomStringConvertible {
        /// The agent answered with a JSON-RPC error.
        case agent(ACPError)
        case timedOut(method: String, after: Duration)
        case exited(AgentTermination)
        case notStarted(String)

        var description: String {
            switch self {
            case .agent(let error): "\(error)"
            case .timedOut(let method, let after): "the agent did not answer \(method) within \(after.wholeMilliseconds) ms"
            case .exited(let termination): "the agent exited (\(termination.words))"
            case .notStarted(let why): why
            }
        }
    }

    /// What `initialize` told: the agent's capabilities and name.
    struct Capabilities: Sendable {
        var loadSession = false
        var resumeSession = false
        var agentName: String?
        /// Whether the agent takes MCP servers over HTTP (`mcpCapabilities.http`).
        var mcpHTTP = false
    }

    /// The longest message read from the agent; a longer line is dropped whole.
    static let maxMessageBytes = 4 << 20

    /// The methods of the client side that this client serves.
    static let servedMethods: Set<String> = ["session/request_permission", ACPElicitation.method]

    nonisolated let pid: pid_t
    nonisolated let launch: AgentLaunch
    private let outgoing: AsyncStream<String>.Continuation
    private let kills: AsyncStream<Duration>.Continuation
    private let handler: Handler
    private let logger: Logger
    private var nextId = 0
    private var pending: [Int: CheckedContinuation<Result<JSONValue, Failure>, Never>] = [:]
    private var termination: AgentTermination?
    private var process: Task<Void, Never>?
    /// Set once `initialize` has been answered.
    private(set) var capabilities: Capabilities?
    /// The ACP session this process serves (created or loaded by an execution), and what the
    /// answer that opened it offered.
    private(set) var session: OpenSession?

    struct OpenSession: Sendable {
        var id: String
        var modeIds: [String]
        /// The mode it opened in (restored after an execution that asked for another).
        var defaultMode: String?
        var currentMode: String?
        var modelIds: [String]

        init(id: String, answer: JSONValue) {
            self.id = id
            let modes = answer["modes"]
            modeIds = (modes?["availableModes"]?.arrayValue ?? []).compactMap { $0["id"]?.stringValue }
            defaultMode = modes?["currentModeId"]?.stringValue
            currentMode = defaultMode
            modelIds = (answer["models"]?["availableModels"]?.arrayValue ?? []).compactMap { $0["modelId"]?.stringValue }
        }
    }

    func opened(_ session: OpenSession) { self.session = session }

    func modeChanged(to mode: String) { session?.currentMode = mode }

    private init(
        pid: pid_t, launch: AgentLaunch, outgoing: AsyncStream<String>.Continuation, kills: AsyncStream<Duration>.Continuation, handler: @escaping Handler,
        logger: Logger
    ) {
        self.pid = pid
        self.launch = launch
        self.outgoing = outgoing
        self.kills = kills
        self.handler = handler
        self.logger = logger
    }

    /// Starts the agent; returns once it runs (or throws why it could not start).
    static func start(
        invocation: AgentInvocation, launch: AgentLaunch, workingDirectory: String, environment: [String: String],
        secretMask: SecretMask, logger: Logger, handler: @escaping Handler
    ) async throws(Failure) -> ACPConnection {
        let (input, outgoing) = AsyncStream.makeStream(of: String.self)
        let (kills, killContinuation) = AsyncStream.makeStream(of: Duration.self)
        let (started, startedContinuation) = AsyncStream.makeStream(of: ACPConnection.self)
        let process = AgentProcess(
            invocation: invocation, workingDirectory: workingDirectory, environment: environment,
            framing: .messages(maxBytes: maxMessageBytes)
        )
        let box = ConnectionBox()
        let task = Task {
            let ended: AgentTermination
            do {
                ended = try await process.run(
                    input: input, stopRequests: kills,
                    onStart: { pid in
                        let connection = ACPConnection(pid: pid, launch: launch, outgoing: outgoing, kills: killContinuation, handler: handler, logger: logger)
                        box.set(connection)
                        startedContinuation.yield(connection)
                        startedContinuation.finish()
                    },
                    onLine: { stream, line in
                        guard let connection = box.get() else { return }
                        let masked: AgentOutputLine =
                            switch line {
                            case .line(let text): .line(secretMask.isEmpty ? text : secretMask.apply(text))
                            case .overlong: line
                            }
                        await connection.received(masked, on: stream)
                    }
                )
            } catch {
                startedContinuation.finish()
                box.failure = "could not start the agent \(invocation.executable): \(error)"
                return
            }
            await box.get()?.exited(ended)
        }
        for await connection in started {
            await connection.adopt(task)
            return connection
        }
        await task.value
        throw .notStarted(box.failure ?? "the agent did not start")
    }

    private func adopt(_ task: Task<Void, Never>) { process = task }

    var hasExited: Bool { termination != nil }

    // MARK: Requests

    /// Sends a request and waits for its answer (at most `timeout`, when given).
    func request(_ method: String, _ params: JSONValue, timeout: Duration? = nil) async throws(Failure) -> JSONValue {
        if let termination { throw .exited(termination) }
        nextId += 1
        let id = nextId
        let result = await withCheckedContinuation { continuation in
            pending[id] = continuation
            outgoing.yield(ACPMessage.request(id: id, method: method, params: params) + "\n")
            if let timeout {
                Task { [weak self] in
                    try? await Task.sleep(for: timeout)
                    await self?.resolve(id, .failure(.timedOut(method: method, after: timeout)))
                }
            }
        }
        return try result.get()
    }

    func notify(_ method: String, _ params: JSONValue) {
        guard termination == nil else { return }
        outgoing.yield(ACPMessage.notification(method: method, params: params) + "\n")
    }

    private func resolve(_ id: Int, _ result: Result<JSONValue, Failure>) {
        pending.removeValue(forKey: id)?.resume(returning: result)
    }

    /// `initialize`, once per process.
    func initialize(timeout: Duration) async throws(Failure) -> Capabilities {
        if let capabilities { return capabilities }
        let answer = try await request(
            "initialize",
            [
                "protocolVersion": .number(1),
                // Honest: this client reads no files and runs no terminals for the agent. The agent
                // works in its own workspace, inside the sandbox, with its own tools.
                // Forms the agent asks the user to fill (`elicitation/create`) reach the user.
                "clientCapabilities": ["fs": ["readTextFile": false, "writeTextFile": false], "terminal": false, "elicitation": ["form": [:]]],
                "clientInfo": ["name": "cloud-agent", "title": "cloud-agent runtime", "version": .string("protocol \(RuntimeProtocol.version)")],
            ], timeout: timeout)
        let agent = answer["agentCapabilities"]
        let found = Capabilities(
            loadSession: agent?["loadSession"]?.boolValue == true,
            resumeSession: agent?["sessionCapabilities"]?["resume"].map { $0 != .null } ?? false,
            agentName: answer["agentInfo"]?["name"]?.stringValue,
            mcpHTTP: agent?["mcpCapabilities"]?["http"]?.boolValue == true
        )
        capabilities = found
        return found
    }

    // MARK: What the agent writes

    private func received(_ output: AgentOutputLine, on stream: AgentStream) async {
        guard stream == .stdout else {
            if case .line(let line) = output { _ = await handler(.output(stream, line)) }
            return
        }
        let line: String
        switch output {
        case .overlong(let bytes):
            _ = await handler(.overlong(bytes))
            return
        case .line(let text):
            line = text
        }
        guard !line.trimmingCharacters(in: .whitespaces).isEmpty else { return }
        switch ACPMessage.parse(line) {
        case .response(let id, let result):
            guard let number = id.intValue.map(Int.init), pending[number] != nil else {
                logger.info("an ACP answer to no pending request: ignored", metadata: ["id": .string(JSONText.encode(id))])
                return
            }
            resolve(number, result.mapError { .agent($0) })
        case .notification(let method, let params):
            if method == "session/update", let update = params["update"] {
                _ = await handler(.update(update, raw: line))
            }
        // Other notifications (extensions, `_meta` ones) carry nothing this client uses.
        case .request(let id, let method, let params):
            guard Self.servedMethods.contains(method) else {
                outgoing.yield(
                    ACPMessage.response(
                        id: id,
                        error: ACPError(
                            code: ACPError.methodNotFound, message: "Method not found", data: ["method": .string(method)]
                        )) + "\n")
                logger.info("an ACP request this client does not serve: method not found", metadata: ["method": .string(String(method.prefix(100)))])
                return
            }
            let handler = handler
            let outgoing = outgoing
            let elicitation = method == ACPElicitation.method
            Task {
                let result =
                    elicitation
                    ? await handler(.elicitation(params, raw: line)) ?? ACPElicitation.result(decision: "cancelled", answer: nil, params: params)
                    : await handler(.permission(params, raw: line)) ?? ["outcome": ["outcome": "cancelled"]]
                outgoing.yield(ACPMessage.response(id: id, result: result) + "\n")
            }
        case .invalid:
            _ = await handler(.output(.stdout, line))
        }
    }

    private func exited(_ ended: AgentTermination) async {
        termination = ended
        outgoing.finish()
        kills.finish()
        for (_, continuation) in pending { continuation.resume(returning: .failure(.exited(ended))) }
        pending = [:]
        _ = await handler(.exited(ended))
    }

    // MARK: Ending it

    /// SIGTERM to the agent and everything it started, SIGKILL after `grace`.
    func kill(grace: Duration) {
        guard termination == nil else { return }
        kills.yield(grace)
    }

    /// Closes the agent's stdin (an ACP agent exits at its end), signals it after a moment if it
    /// is still there, and waits until it is gone.
    func close(grace: Duration) async {
        outgoing.finish()
        let process = process
        let wait = Task { await process?.value }
        let closed = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await wait.value; return true
            }
            group.addTask {
                try? await Task.sleep(for: min(grace, .milliseconds(500))); return false
            }
            let first = await group.next() ?? true
            group.cancelAll()
            return first
        }
        if !closed { kill(grace: grace) }
        await wait.value
    }
}

/// The connection, for the process's callbacks (set once it has started).
private final class ConnectionBox: Sendable {
    private let state = Mutex<(connection: ACPConnection?, failure: String?)>((nil, nil))

    func set(_ value: ACPConnection) { state.withLock { $0.connection = value } }
    func get() -> ACPConnection? { state.withLock { $0.connection } }
    var failure: String? {
        get { state.withLock { $0.failure } }
        set { state.withLock { $0.failure = newValue } }
    }
}

extension AgentTermination {
    /// `exit code 3`, `killed by SIGKILL`.
    var words: String {
        switch self {
        case .exited(let code): "exit code \(code)"
        case .signaled(let signal): "killed by \(ProcessGroup.signalName(signal))"
        }
    }
}
