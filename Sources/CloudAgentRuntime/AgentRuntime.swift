import CloudAgentAgents
import CloudAgentProtocol
import Foundation
import Logging
import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The runtime's state and its executions: the outbox of numbered events, the current link to
/// the control plane, and the one active execution.
///
/// As a `Service` it runs the executions it accepts (each is a child task of `run()`) until it
/// is told to stop — by SIGTERM (graceful shutdown), by the control plane's `shutdown`, by the
/// control plane refusing it, or by itself when it can reach no control plane (`OrphanPolicy`) —
/// and then stops the active agent, reports it `interrupted`, waits briefly for the control plane
/// to acknowledge that, and returns.
public actor AgentRuntime: Service, CustomStringConvertible {
    /// The interrupt reason of an execution stopped because the runtime got SIGTERM.
    public static let sigtermReason = "runtime shutdown: SIGTERM"

    /// An open connection's view of the runtime: the frames to write, in order (hello first).
    public struct Link: Sendable {
        public let id: UInt64
        public let frames: AsyncStream<String>
    }

    private enum Request: Sendable {
        case execute(ExecuteCommand)
        case shutdown(reason: String)
    }

    struct ActiveExecution {
        let executionId: String
        let stopRequests: AsyncStream<Duration>
        let stops: AsyncStream<Duration>.Continuation
        var processGroup: pid_t?
        var stopReason: String?
        /// Agent and output events so far (the heartbeat's progress).
        var progress: Int64 = 0
        /// Reads the agent's stdout in its own format.
        var parser: any AgentOutputParser = NormalizedJSONLinesParser()
        /// An ACP execution's reading of its turn (nil for other agents).
        var acpTurn: ACPTurnReader?
        /// While an ACP agent replays a loaded session's history: not this execution's events.
        var acpReplaying = false
        /// A read-only mode: the agent's permission requests are rejected.
        var readOnly = false
        /// The ACP session the prompt went to, once it has (an interrupt then cancels it).
        var acpPromptSession: String?
        /// When the last update came, and whether a flush of gathered text waits for a pause.
        var acpLastUpdateAt = ContinuousClock.now
        var acpFlushScheduled = false
        /// Whether the agent's permission requests go to the user (`approvals: ask`).
        var asks = false
        /// The agent's stdin, for an agent that takes the answers to its requests there.
        var agentInput: AsyncStream<String>.Continuation?
        /// The agent's requests waiting for an answer, by the id the control plane knows, with
        /// how to give the agent its answer.
        var waitingForInput: [String: @Sendable (InputAnswerFrame) -> Void] = [:]
        /// The agent's own ids of its requests, to the ids the control plane knows.
        var agentRequestIds: [String: String] = [:]
        /// Held by the control plane (a budget request waits): the agent's processes are stopped.
        var paused = false
    }

    private struct OpenLink {
        let id: UInt64
        let frames: AsyncStream<String>.Continuation
        var welcomed = false
    }

    public nonisolated let configuration: RuntimeConfiguration
    nonisolated let agents: AgentCatalog
    nonisolated let agentEnvironment: [String: String]
    /// The session's secrets, masked in every line the agent prints.
    nonisolated let secretMask: SecretMask
    nonisolated let logger: Logger
    private nonisolated let requests: AsyncStream<Request>
    private nonisolated let requestContinuation: AsyncStream<Request>.Continuation

    var outbox: EventOutbox
    /// Readers of the agent's output waiting for room in the outbox (backpressure).
    private var roomWaiters: [CheckedContinuation<Void, Never>] = []
    /// Agent output lines dropped because the outbox was full while stopping.
    var droppedLines = 0
    private var orphanPolicy: OrphanPolicy
    private var presence: OrphanPolicy.State
    /// The `seq` of the last `execution.ended` until the control plane acknowledges it.
    private var unacknowledgedEndSeq: Int64?
    private var link: OpenLink?
    private var linkCount: UInt64 = 0
    /// How many connections the control plane has welcomed.
    public private(set) var welcomeCount = 0
    var active: ActiveExecution?
    private var executed: Set<String> = []
    private var stopping = false
    private var heartbeatInterval: Duration
    var stopGrace: Duration
    /// The ACP agent, which lives as long as the runtime (started by the first ACP execution).
    var acp: ACPConnection?
    /// The ACP session's cumulative cost when the last turn ended (what a turn's cost counts from).
    var acpCostUsd: Double?

    /// - Parameters:
    ///   - agentEnvironment: what agents run with (see `RuntimeConfiguration.agentEnvironment`).
    public init(configuration: RuntimeConfiguration, agents: AgentCatalog, agentEnvironment: [String: String], logger: Logger) {
        self.configuration = configuration
        self.agents = agents
        self.agentEnvironment = agentEnvironment
        self.secretMask = configuration.secretMask(agentEnvironment: agentEnvironment)
        self.logger = logger
        self.heartbeatInterval = configuration.heartbeatInterval
        self.stopGrace = configuration.stopGrace
        self.outbox = EventOutbox(limitBytes: configuration.outboxLimitBytes)
        self.orphanPolicy = OrphanPolicy(
            idleTimeout: configuration.idleTimeout, orphanLimit: configuration.orphanLimit, connectTimeout: configuration.connectTimeout
        )
        self.presence = OrphanPolicy.State(startedAt: .now)
        (requests, requestContinuation) = AsyncStream.makeStream(of: Request.self)
        // An agent's stdin stays open for the answers to its requests: a write to an agent that
        // has just exited must fail (EPIPE), never kill the process the runtime runs in.
        signal(SIGPIPE, SIG_IGN)
    }

    /// How often the runtime looks at `OrphanPolicy` at least: the policy's deadlines come from
    /// recorded instants, so this bounds only how late a stop can be, not when it is due.
    static let orphanCheckInterval = Duration.milliseconds(250)

    /// The session's idle timeout as the runtime knows it (from its start, the welcome, settings).
    public var idleTimeout: Duration { orphanPolicy.idleTimeout }

    /// The bytes of the frames the control plane has not acknowledged (the outbox's fill).
    public var unacknowledgedBytes: Int { outbox.pendingBytes }

    public nonisolated var description: String { "AgentRuntime(\(configuration.runtimeId))" }

    // MARK: - Service

    public nonisolated func run() async {
        await withTaskGroup(of: Void.self) { watchers in
            watchers.addTask { await self.watchForOrphanhood() }
            await runExecutions()
            watchers.cancelAll()
        }
    }

    private nonisolated func runExecutions() async {
        await withTaskGroup(of: Void.self) { group in
            var reason = Self.sigtermReason
            await withGracefulShutdownHandler {
                for await request in requests {
                    switch request {
                    case .execute(let command):
                        group.addTask { await self.runExecution(command) }
                    case .shutdown(let why):
                        reason = why
                        return
                    }
                }
            } onGracefulShutdown: { [requestContinuation] in
                requestContinuation.yield(.shutdown(reason: Self.sigtermReason))
            }
            let ackWait = await beginStopping(reason: reason)
            // Executions accepted just before the stop start now, and end interrupted at once.
            requestContinuation.finish()
            for await request in requests {
                if case .execute(let command) = request { group.addTask { await self.runExecution(command) } }
            }
            await group.waitForAll()
            await closeACP(grace: ackWait)
            await waitForAcknowledgement(within: ackWait)
            logger.info("runtime stopped", metadata: ["reason": .string(reason)])
        }
    }

    /// Refuses new executions and stops the active one. The budget comes out of the stop grace:
    /// SIGKILL after min(2 s, grace/2), then up to min(1 s, grace/4) waiting for the ack.
    private func beginStopping(reason: String) -> Duration {
        stopping = true
        releaseRoomWaiters()
        let killAfter = min(.seconds(2), stopGrace / 2)
        let ackWait = min(.seconds(1), stopGrace / 4)
        if let executionId = active?.executionId {
            logger.info("stopping the active execution", metadata: ["executionId": .string(executionId), "reason": .string(reason)])
            requestStop(executionId: executionId, reason: reason, grace: killAfter)
        }
        return ackWait
    }

    private func waitForAcknowledgement(within limit: Duration) async {
        let deadline = ContinuousClock.now + limit
        while !outbox.isEmpty, link != nil, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        if !outbox.isEmpty {
            logger.warning("exiting with unacknowledged events", metadata: ["lastSeq": "\(outbox.lastSeq)", "ackedSeq": "\(outbox.acknowledgedSeq)"])
        }
    }

    // MARK: - The link to the control plane

    /// A new connection: its frames start with hello; events flow once it is welcomed.
    public func openLink() -> Link {
        if let previous = link { end(previous) }
        linkCount += 1
        let (frames, continuation) = AsyncStream.makeStream(of: String.self)
        link = OpenLink(id: linkCount, frames: continuation)
        continuation.yield(
            ProtocolCoding.encode(
                .hello(
                    runtimeId: configuration.runtimeId,
                    protocolVersion: RuntimeProtocol.version,
                    activeExecutionId: active?.executionId,
                    lastSeq: outbox.lastSeq
                )))
        return Link(id: linkCount, frames: frames)
    }

    public func closeLink(_ id: UInt64) {
        guard let open = link, open.id == id else { return }
        end(open)
        link = nil
    }

    /// A link is over; if the control plane had welcomed it, the runtime is on its own from now.
    private func end(_ open: OpenLink) {
        open.frames.finish()
        if open.welcomed { presence.disconnectedSince = .now }
    }

    /// The heartbeat interval once the link is welcomed; nil before.
    public func heartbeatInterval(on linkId: UInt64) -> Duration? {
        guard let open = link, open.id == linkId, open.welcomed else { return nil }
        return heartbeatInterval
    }

    /// Sends a heartbeat for the running execution, if there is one (heartbeats are not queued).
    public func sendHeartbeat(on linkId: UInt64) {
        guard let open = link, open.id == linkId, open.welcomed, let execution = active, execution.processGroup != nil else { return }
        open.frames.yield(ProtocolCoding.encode(.heartbeat(executionId: execution.executionId, at: Date(), events: execution.progress)))
    }

    public func receive(_ message: ControlMessage, on linkId: UInt64) {
        guard var open = link, open.id == linkId else { return }
        switch message {
        case .welcome(let ackedSeq, let heartbeatIntervalMs, let stopGraceMs, let idleTimeoutMs, _):
            // Its controlUrls are the connection's business (`ControlConnection`).
            if ackedSeq > outbox.lastSeq {
                logger.warning(
                    "the control plane acknowledges events this runtime never sent", metadata: ["ackedSeq": "\(ackedSeq)", "lastSeq": "\(outbox.lastSeq)"])
            }
            acknowledge(upTo: ackedSeq)
            heartbeatInterval = .milliseconds(max(heartbeatIntervalMs, 1))
            stopGrace = .milliseconds(max(stopGraceMs, 0))
            if let idleTimeoutMs { orphanPolicy.idleTimeout = .milliseconds(idleTimeoutMs) }
            open.welcomed = true
            link = open
            presence.disconnectedSince = nil
            if presence.firstWelcomedAt == nil { presence.firstWelcomedAt = .now }
            welcomeCount += 1
            for entry in outbox.pending { open.frames.yield(entry.frame) }
            logger.info(
                "connected",
                metadata: [
                    "ackedSeq": "\(ackedSeq)", "resent": "\(outbox.pending.count)", "heartbeatIntervalMs": "\(heartbeatIntervalMs)",
                    "idleTimeoutMs": "\(orphanPolicy.idleTimeout.wholeMilliseconds)",
                ])
        case .settings(let idleTimeoutMs):
            orphanPolicy.idleTimeout = .milliseconds(idleTimeoutMs)
            logger.info("settings changed", metadata: ["idleTimeoutMs": "\(idleTimeoutMs)"])
        case .nodes:
            // The connection's business, like a welcome's controlUrls (`ControlConnection`).
            break
        case .ack(let seq):
            acknowledge(upTo: seq)
        case .ping(let nonce):
            open.frames.yield(ProtocolCoding.encode(.pong(nonce: nonce)))
        case .execute(let command):
            accept(command)
        case .kill(let executionId, let reason):
            guard active?.executionId == executionId else {
                logger.info("kill for an execution that is not running: ignored", metadata: ["executionId": .string(executionId)])
                return
            }
            logger.info("killing the agent", metadata: ["executionId": .string(executionId), "reason": .string(reason)])
            requestStop(executionId: executionId, reason: reason, grace: stopGrace)
        case .shutdown(let reason):
            logger.info("the control plane asks the runtime to shut down", metadata: ["reason": .string(reason)])
            requestContinuation.yield(.shutdown(reason: "runtime shutdown: \(reason)"))
        case .pause(let executionId):
            hold(executionId, paused: true)
        case .resume(let executionId):
            hold(executionId, paused: false)
        case .answer(let answer):
            guard var execution = active, execution.executionId == answer.executionId,
                let respond = execution.waitingForInput.removeValue(forKey: answer.requestId)
            else {
                // A repeat after a reconnect, or the answer to a request that is gone.
                logger.debug("answer to a request nobody waits for: ignored", metadata: ["requestId": .string(answer.requestId)])
                return
            }
            active = execution
            logger.info(
                "input answered",
                metadata: ["executionId": .string(answer.executionId), "requestId": .string(answer.requestId), "decision": .string(answer.decision)])
            respond(answer)
        }
    }

    // MARK: - Input requests

    /// The agent asks (a permission or a question) and waits: the request goes to the control
    /// plane as an `input.requested` event, and `respond` gives the agent its answer when it
    /// comes. With approvals `auto` a permission is allowed here at once (its allow-once option),
    /// recorded as an `agent` event of kind `log`; questions always go to the user.
    func requestInput(
        _ executionId: String, _ request: [String: JSONValue], agentRequestId: String? = nil,
        respond: @escaping @Sendable (InputAnswerFrame) -> Void
    ) {
        let requestId = "req_" + UUID().uuidString.lowercased()
        guard var execution = active, execution.executionId == executionId, !stopping else {
            respond(InputAnswerFrame(executionId: executionId, requestId: requestId, decision: "cancelled"))
            return
        }
        var data = request
        data["requestId"] = .string(requestId)
        let kind = data["kind"]?.stringValue ?? "permission"
        guard kind == "permission" || kind == "question" else {
            // Only the control plane asks about budgets; an agent asks for a permission or an answer.
            logger.warning(
                "input request of an unknown kind: denied", metadata: ["executionId": .string(executionId), "kind": .string(String(kind.prefix(50)))])
            respond(InputAnswerFrame(executionId: executionId, requestId: requestId, decision: "deny"))
            return
        }
        if kind == "permission", execution.readOnly || !execution.asks {
            // Decided here: allowed (approvals auto, the allow-once option), or denied in a
            // read-only execution, whatever the approvals: what asks permission writes or runs.
            let options = data["options"]?.arrayValue ?? []
            let allow = !execution.readOnly
            let preferred = allow ? ["allow_once", "allow_always"] : ["reject_once", "reject_always"]
            let option = preferred.lazy.compactMap { kind in options.first { $0["kind"] == .string(kind) } }.first
            let tool = data["tool"]?.stringValue ?? "a tool"
            let input = data["input"].map { $0.stringValue ?? JSONText.encode($0) }.map { " " + String($0.prefix(300)) } ?? ""
            let words = allow ? "permission allowed automatically (approvals auto)" : "permission denied: the execution is read-only"
            record(
                executionId, kind: RuntimeEvent.Kind.agent,
                data: ["kind": "log", "message": .string("\(words): \(tool)\(input)"), "raw": .string(JSONText.encode(.object(request)))])
            respond(InputAnswerFrame(executionId: executionId, requestId: requestId, decision: allow ? "allow" : "deny", optionId: option?["id"]?.stringValue))
            return
        }
        execution.waitingForInput[requestId] = respond
        if let agentRequestId { execution.agentRequestIds[agentRequestId] = requestId }
        active = execution
        logger.info("the agent asks", metadata: ["executionId": .string(executionId), "requestId": .string(requestId), "kind": .string(kind)])
        record(executionId, kind: RuntimeEvent.Kind.inputRequested, data: data)
    }

    /// The agent no longer waits for the answer to its request: the control plane is told, and
    /// an answer that still comes is dropped.
    private func withdrawInput(_ executionId: String, agentRequestId: String) {
        guard var execution = active, execution.executionId == executionId,
            let requestId = execution.agentRequestIds.removeValue(forKey: agentRequestId),
            execution.waitingForInput.removeValue(forKey: requestId) != nil
        else { return }
        active = execution
        logger.info("the agent withdrew its request", metadata: ["executionId": .string(executionId), "requestId": .string(requestId)])
        record(executionId, kind: RuntimeEvent.Kind.inputWithdrawn, data: ["requestId": .string(requestId)])
    }

    /// Every request the execution still waits on is answered `cancelled` (it is being stopped).
    private func cancelInputs(of executionId: String) {
        guard var execution = active, execution.executionId == executionId, !execution.waitingForInput.isEmpty else { return }
        let waiting = execution.waitingForInput
        execution.waitingForInput = [:]
        active = execution
        for (requestId, respond) in waiting {
            respond(InputAnswerFrame(executionId: executionId, requestId: requestId, decision: "cancelled"))
        }
    }

    // MARK: - Executions

    private func accept(_ command: ExecuteCommand) {
        let metadata: Logger.Metadata = ["executionId": .string(command.executionId)]
        if stopping {
            logger.info("execute while stopping: ignored", metadata: metadata)
        } else if let running = active {
            logger.info(
                "execute while another execution is active: ignored", metadata: metadata.merging(["activeExecutionId": .string(running.executionId)]) { $1 })
        } else if executed.contains(command.executionId) {
            logger.info("execute of an execution already run: ignored", metadata: metadata)
        } else {
            executed.insert(command.executionId)
            presence.lastExecutionStartedAt = .now
            let (stopRequests, stops) = AsyncStream.makeStream(of: Duration.self)
            active = ActiveExecution(executionId: command.executionId, stopRequests: stopRequests, stops: stops)
            active?.asks = command.asks
            active?.readOnly = AgentMode.isReadOnly(command.mode)
            requestContinuation.yield(.execute(command))
        }
    }

    private func requestStop(executionId: String, reason: String, grace: Duration) {
        guard var execution = active, execution.executionId == executionId else { return }
        if execution.stopReason == nil { execution.stopReason = reason }
        let wasPaused = execution.paused
        execution.paused = false
        active = execution
        execution.stops.yield(grace)
        // A held agent goes on, to take its SIGTERM (a SIGKILL would reach it anyway).
        if wasPaused, let group = execution.processGroup { ProcessGroup.signalTree(group, SIGCONT) }
        cancelInputs(of: executionId)
    }

    /// Holds the active execution's agent where it is (SIGSTOP to it and all it started), or
    /// lets it go on (SIGCONT). A pause before the agent has started takes effect when it starts.
    /// Repeats, and a hold of an execution that is not active, are ignored.
    private func hold(_ executionId: String, paused: Bool) {
        guard var execution = active, execution.executionId == executionId, execution.paused != paused else { return }
        guard !paused || execution.stopReason == nil else { return }
        execution.paused = paused
        active = execution
        if let group = execution.processGroup { ProcessGroup.signalTree(group, paused ? SIGSTOP : SIGCONT) }
        logger.info(paused ? "agent paused: the control plane holds it" : "agent resumed", metadata: ["executionId": .string(executionId)])
    }

    /// Runs an accepted execution to its `execution.ended` event.
    private nonisolated func runExecution(_ command: ExecuteCommand) async {
        let executionId = command.executionId
        var logger = self.logger
        logger[metadataKey: "executionId"] = .string(executionId)
        guard let stopRequests = await startExecution(executionId) else { return }
        if let reason = await stopReason(executionId) {
            await end(executionId, ["status": .string("interrupted"), "interruptReason": .string(reason)], logger: logger)
            return
        }
        if let launch = command.launch, launch.isACP {
            await runACPExecution(command, launch: launch, stopRequests: stopRequests, logger: logger)
            return
        }
        let invocation: AgentInvocation
        do {
            invocation = try agents.invocation(for: command, environment: agentEnvironment)
        } catch {
            await end(executionId, ["status": .string("failed"), "error": .string(error.description)], logger: logger)
            return
        }
        await useParser(AgentOutputParsers.parser(for: command), for: executionId)
        do {
            try Self.writePrivateFiles(invocation.files)
        } catch {
            await end(executionId, ["status": .string("failed"), "error": .string("could not prepare agent \(command.agent): \(error)")], logger: logger)
            return
        }
        defer { for path in invocation.files.keys { try? FileManager.default.removeItem(atPath: path) } }
        // Neither its arguments nor its environment: the session's variables and secrets never reach the log.
        logger.info(
            "starting the agent",
            metadata: [
                "agent": .string(command.agent), "executable": .string(invocation.executable),
                "resume": .string(command.conversationId ?? "-"),
            ])
        let process = AgentProcess(invocation: invocation, workingDirectory: configuration.workspace, environment: agentEnvironment)
        let input: AsyncStream<String>
        if invocation.answersOnStandardInput {
            // Open until the execution ends: the answers to the agent's requests follow the prompt.
            let (stream, continuation) = AsyncStream.makeStream(of: String.self)
            continuation.yield(invocation.standardInput)
            await useAgentInput(continuation, for: executionId)
            input = stream
        } else {
            input = AgentProcess.input(invocation.standardInput)
        }
        let termination: AgentTermination
        do {
            termination = try await process.run(
                input: input,
                stopRequests: stopRequests,
                onStart: { pid in await self.agentStarted(executionId, pid: pid) },
                onLine: { stream, output in
                    if case .line(let line) = output { await self.agentLine(executionId, stream: stream, line: line) }
                }
            )
        } catch {
            logger.error("the agent could not be started", metadata: ["error": "\(error)"])
            await end(executionId, ["status": .string("failed"), "error": .string("could not start agent \(command.agent): \(error)")], logger: logger)
            return
        }
        let (outcome, conversationId) = await parserReport(executionId)
        var data = Self.endData(termination: termination, stopReason: await stopReason(executionId), outcome: outcome)
        if let conversationId { data[RuntimeEvent.conversationIdKey] = .string(conversationId) }
        await end(executionId, data, logger: logger)
    }

    /// Writes files only the runtime's user may read (they may hold the session's secrets).
    static func writePrivateFiles(_ files: [String: String]) throws {
        for (path, content) in files.sorted(by: { $0.key < $1.key }) {
            try? FileManager.default.removeItem(atPath: path)
            guard FileManager.default.createFile(atPath: path, contents: Data(content.utf8), attributes: [.posixPermissions: 0o600]) else {
                throw AgentInvocationError("cannot write \(path)")
            }
        }
    }

    /// How an execution ended: interrupted when it was stopped; else the agent's own report of
    /// its outcome (a failed result is a failed execution whatever the exit code), then the exit.
    static func endData(termination: AgentTermination, stopReason: String?, outcome: AgentOutcome?) -> [String: JSONValue] {
        var data: [String: JSONValue]
        if let reason = stopReason {
            data = ["status": .string("interrupted"), "interruptReason": .string(reason)]
            switch termination {
            case .exited(let code): data["exitCode"] = .number(Double(code))
            case .signaled(let signal): data["signal"] = .string(ProcessGroup.signalName(signal))
            }
            return data
        }
        switch termination {
        case .exited(let code):
            data = ["exitCode": .number(Double(code))]
            if case .failed(let message) = outcome {
                data["status"] = .string("failed")
                data["error"] = .string(message)
            } else if code == 0 {
                data["status"] = .string("completed")
            } else {
                data["status"] = .string("failed")
                data["error"] = .string("agent exited with code \(code)")
            }
        case .signaled(let signal):
            let name = ProcessGroup.signalName(signal)
            data = ["status": .string("failed"), "signal": .string(name), "error": .string("agent killed by \(name)")]
        }
        return data
    }

    private func useAgentInput(_ input: AsyncStream<String>.Continuation, for executionId: String) {
        guard var execution = active, execution.executionId == executionId else {
            input.finish()
            return
        }
        execution.agentInput = input
        active = execution
    }

    private func useParser(_ parser: any AgentOutputParser, for executionId: String) {
        guard var execution = active, execution.executionId == executionId else { return }
        execution.parser = parser
        active = execution
    }

    private func parserReport(_ executionId: String) -> (AgentOutcome?, String?) {
        guard let execution = active, execution.executionId == executionId else { return (nil, nil) }
        return (execution.parser.outcome, execution.parser.conversationId)
    }

    /// The stop requests of the accepted execution, or nil if it is not the active one.
    private func startExecution(_ executionId: String) -> AsyncStream<Duration>? {
        guard let execution = active, execution.executionId == executionId else { return nil }
        return execution.stopRequests
    }

    func stopReason(_ executionId: String) -> String? {
        guard let execution = active, execution.executionId == executionId else { return nil }
        return execution.stopReason
    }

    func agentStarted(_ executionId: String, pid: pid_t) {
        guard var execution = active, execution.executionId == executionId else { return }
        execution.processGroup = pid
        active = execution
        if execution.paused { ProcessGroup.signalTree(pid, SIGSTOP) }
        record(executionId, kind: RuntimeEvent.Kind.running, data: ["pid": .number(Double(pid)), "processGroup": .number(Double(pid))])
    }

    func agentLine(_ executionId: String, stream: AgentStream, line: String) async {
        await waitForRoom()
        guard var execution = active, execution.executionId == executionId else { return }
        // Full only while stopping (otherwise `waitForRoom` waited): the agent is on its way
        // out and no control plane takes events; dropping keeps the bound.
        guard !outbox.isFull else {
            droppedLines += 1
            return
        }
        execution.progress += 1
        let line = secretMask.isEmpty ? line : secretMask.apply(line)
        let items: [AgentOutputItem] = stream == .stdout ? execution.parser.parse(line: line) : [.output]
        active = execution
        for item in items {
            switch item {
            case .agent(let data): record(executionId, kind: RuntimeEvent.Kind.agent, data: data)
            case .output: record(executionId, kind: RuntimeEvent.Kind.output, data: ["stream": .string(stream.rawValue), "line": .string(line)])
            case .inputRequest(let request):
                guard let agentInput = execution.agentInput else {
                    record(
                        executionId, kind: RuntimeEvent.Kind.agent,
                        data: ["kind": "error", "message": "the agent asked for input it cannot be given", "raw": .string(line)])
                    continue
                }
                requestInput(executionId, request.data, agentRequestId: request.agentRequestId) { answer in
                    agentInput.yield(request.reply.line(decision: answer.decision, optionId: answer.optionId, answer: answer.answer))
                }
            case .withdrawn(let agentRequestId):
                withdrawInput(executionId, agentRequestId: agentRequestId)
            case .reply(let reply):
                execution.agentInput?.yield(reply)
            case .endOfInput:
                execution.agentInput?.finish()
            case .usage(let data):
                record(executionId, kind: RuntimeEvent.Kind.usage, data: data)
            }
        }
    }

    func end(_ executionId: String, _ data: [String: JSONValue], logger: Logger) {
        guard let execution = active, execution.executionId == executionId else { return }
        cancelInputs(of: executionId)
        execution.stops.finish()
        execution.agentInput?.finish()
        active = nil
        presence.lastExecutionEndedAt = .now
        unacknowledgedEndSeq = record(executionId, kind: RuntimeEvent.Kind.ended, data: data)
        var ended: Logger.Metadata = ["status": .string(data["status"]?.stringValue ?? "")]
        for key in ["exitCode", "signal", "interruptReason", "error"] {
            if let value = data[key] { ended[key] = .string(value.stringValue ?? JSONText.encode(value)) }
        }
        logger.info("execution ended", metadata: ended)
        if droppedLines > 0 {
            logger.warning("agent output dropped: the outbox was full while the runtime stopped", metadata: ["lines": "\(droppedLines)"])
            droppedLines = 0
        }
    }

    /// Numbers the event, keeps it until acknowledged, and sends it if the link is welcomed.
    @discardableResult
    func record(_ executionId: String, kind: String, data: [String: JSONValue]) -> Int64 {
        let entry = outbox.append(executionId: executionId, kind: kind, at: Date(), data: data)
        if let open = link, open.welcomed { open.frames.yield(entry.frame) }
        return entry.seq
    }

    // MARK: - Backpressure

    private func acknowledge(upTo seq: Int64) {
        outbox.acknowledge(upTo: seq)
        if let endSeq = unacknowledgedEndSeq, seq >= endSeq {
            // The control plane measures idleness from when it recorded the end: so does the runtime.
            presence.lastExecutionEndedAt = .now
            unacknowledgedEndSeq = nil
        }
        if !outbox.isFull { releaseRoomWaiters() }
    }

    /// Returns once the outbox has room (or the runtime is stopping). Meanwhile the agent's output
    /// is not read: its pipe fills and the agent blocks writing, held but not lost.
    func waitForRoom() async {
        while outbox.isFull, !stopping {
            if roomWaiters.isEmpty {
                logger.warning(
                    "outbox full: holding the agent's output until the control plane acknowledges",
                    metadata: [
                        "pendingBytes": "\(outbox.pendingBytes)", "limitBytes": "\(outbox.limitBytes)",
                    ])
            }
            await withCheckedContinuation { roomWaiters.append($0) }
        }
    }

    private func releaseRoomWaiters() {
        guard !roomWaiters.isEmpty else { return }
        if !stopping { logger.info("room in the outbox: reading the agent's output again", metadata: ["pendingBytes": "\(outbox.pendingBytes)"]) }
        let waiters = roomWaiters
        roomWaiters = []
        for waiter in waiters { waiter.resume() }
    }

    // MARK: - On its own

    /// The control plane refused this runtime (unknown or deleted session, wrong secret): it
    /// stops its agent and exits, whatever the orphan policy says.
    public func refused(status: Int) {
        logger.error("the control plane refused this runtime: stopping", metadata: ["rule": "refused", "status": "\(status)"])
        requestContinuation.yield(.shutdown(reason: "runtime shutdown: refused by the control plane (HTTP \(status))"))
    }

    /// Applies `OrphanPolicy` until the runtime stops (or this task is cancelled).
    private nonisolated func watchForOrphanhood() async {
        while !Task.isCancelled {
            let now = ContinuousClock.now
            switch await orphanDecision(now: now) {
            case nil:
                return
            case .stop(let stop)?:
                await stopOnItsOwn(stop)
                return
            case .connected?:
                try? await Task.sleep(for: Self.orphanCheckInterval)
            case .wait(let deadline)?:
                try? await Task.sleep(until: min(deadline, now + Self.orphanCheckInterval), clock: .continuous)
            }
        }
    }

    /// The policy's decision now; nil once the runtime is stopping anyway.
    private func orphanDecision(now: ContinuousClock.Instant) -> OrphanPolicy.Decision? {
        guard !stopping else { return nil }
        var state = presence
        state.executionActive = active != nil
        state.unacknowledgedEvents = outbox.pending.count
        return orphanPolicy.evaluate(state, now: now)
    }

    private func stopOnItsOwn(_ stop: OrphanPolicy.Stop) {
        guard !stopping else { return }
        switch stop {
        case .idle(let idle, let idleTimeout):
            logger.notice(
                "no control plane and idle: the runtime stops itself",
                metadata: [
                    "rule": "idle", "idleMs": "\(idle.wholeMilliseconds)", "idleTimeoutMs": "\(idleTimeout.wholeMilliseconds)",
                ])
            requestContinuation.yield(.shutdown(reason: "runtime shutdown: idle without a control plane"))
        case .orphanLimit(let disconnected, let limit):
            var metadata: Logger.Metadata = [
                "rule": "orphanLimit", "disconnectedMs": "\(disconnected.wholeMilliseconds)", "orphanLimitMs": "\(limit.wholeMilliseconds)",
            ]
            if let executionId = active?.executionId { metadata["executionId"] = .string(executionId) }
            logger.warning("no control plane within the orphan limit: the runtime stops itself", metadata: metadata)
            requestContinuation.yield(.shutdown(reason: "runtime shutdown: no control plane for \(disconnected.wholeMilliseconds) ms"))
        }
    }
}
