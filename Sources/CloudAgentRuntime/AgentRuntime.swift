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
/// is told to stop — by SIGTERM (graceful shutdown) or by the control plane's `shutdown` — and
/// then stops the active agent, reports it `interrupted`, waits briefly for the control plane to
/// acknowledge that, and returns.
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

    private struct ActiveExecution {
        let executionId: String
        let stopRequests: AsyncStream<Duration>
        let stops: AsyncStream<Duration>.Continuation
        var processGroup: pid_t?
        var stopReason: String?
        /// Agent and output events so far (the heartbeat's progress).
        var progress: Int64 = 0
        /// Reads the agent's stdout in its own format.
        var parser: any AgentOutputParser = NormalizedJSONLinesParser()
    }

    private struct OpenLink {
        let id: UInt64
        let frames: AsyncStream<String>.Continuation
        var welcomed = false
    }

    public nonisolated let configuration: RuntimeConfiguration
    private nonisolated let agents: AgentCatalog
    private nonisolated let agentEnvironment: [String: String]
    /// The session's secrets, masked in every line the agent prints.
    private nonisolated let secretMask: SecretMask
    private nonisolated let logger: Logger
    private nonisolated let requests: AsyncStream<Request>
    private nonisolated let requestContinuation: AsyncStream<Request>.Continuation

    private var outbox = EventOutbox()
    private var link: OpenLink?
    private var linkCount: UInt64 = 0
    /// How many connections the control plane has welcomed.
    public private(set) var welcomeCount = 0
    private var active: ActiveExecution?
    private var executed: Set<String> = []
    private var stopping = false
    private var heartbeatInterval: Duration
    private var stopGrace: Duration

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
        (requests, requestContinuation) = AsyncStream.makeStream(of: Request.self)
    }

    public nonisolated var description: String { "AgentRuntime(\(configuration.runtimeId))" }

    // MARK: - Service

    public nonisolated func run() async {
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
            await waitForAcknowledgement(within: ackWait)
            logger.info("runtime stopped", metadata: ["reason": .string(reason)])
        }
    }

    /// Refuses new executions and stops the active one. The budget comes out of the stop grace:
    /// SIGKILL after min(2 s, grace/2), then up to min(1 s, grace/4) waiting for the ack.
    private func beginStopping(reason: String) -> Duration {
        stopping = true
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
        link?.frames.finish()
        linkCount += 1
        let (frames, continuation) = AsyncStream.makeStream(of: String.self)
        link = OpenLink(id: linkCount, frames: continuation)
        continuation.yield(ProtocolCoding.encode(.hello(
            runtimeId: configuration.runtimeId,
            protocolVersion: RuntimeProtocol.version,
            activeExecutionId: active?.executionId,
            lastSeq: outbox.lastSeq
        )))
        return Link(id: linkCount, frames: frames)
    }

    public func closeLink(_ id: UInt64) {
        guard let open = link, open.id == id else { return }
        open.frames.finish()
        link = nil
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
        case .welcome(let ackedSeq, let heartbeatIntervalMs, let stopGraceMs):
            if ackedSeq > outbox.lastSeq {
                logger.warning("the control plane acknowledges events this runtime never sent", metadata: ["ackedSeq": "\(ackedSeq)", "lastSeq": "\(outbox.lastSeq)"])
            }
            outbox.acknowledge(upTo: ackedSeq)
            heartbeatInterval = .milliseconds(max(heartbeatIntervalMs, 1))
            stopGrace = .milliseconds(max(stopGraceMs, 0))
            open.welcomed = true
            link = open
            welcomeCount += 1
            for event in outbox.pending { open.frames.yield(ProtocolCoding.encode(.event(event))) }
            logger.info("connected", metadata: ["ackedSeq": "\(ackedSeq)", "resent": "\(outbox.pending.count)", "heartbeatIntervalMs": "\(heartbeatIntervalMs)"])
        case .ack(let seq):
            outbox.acknowledge(upTo: seq)
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
        }
    }

    // MARK: - Executions

    private func accept(_ command: ExecuteCommand) {
        let metadata: Logger.Metadata = ["executionId": .string(command.executionId)]
        if stopping {
            logger.info("execute while stopping: ignored", metadata: metadata)
        } else if let running = active {
            logger.info("execute while another execution is active: ignored", metadata: metadata.merging(["activeExecutionId": .string(running.executionId)]) { $1 })
        } else if executed.contains(command.executionId) {
            logger.info("execute of an execution already run: ignored", metadata: metadata)
        } else {
            executed.insert(command.executionId)
            let (stopRequests, stops) = AsyncStream.makeStream(of: Duration.self)
            active = ActiveExecution(executionId: command.executionId, stopRequests: stopRequests, stops: stops)
            requestContinuation.yield(.execute(command))
        }
    }

    private func requestStop(executionId: String, reason: String, grace: Duration) {
        guard var execution = active, execution.executionId == executionId else { return }
        if execution.stopReason == nil { execution.stopReason = reason }
        active = execution
        execution.stops.yield(grace)
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
        let invocation: AgentInvocation
        do {
            invocation = try agents.invocation(for: command, environment: agentEnvironment)
        } catch {
            await end(executionId, ["status": .string("failed"), "error": .string(error.description)], logger: logger)
            return
        }
        await useParser(AgentOutputParsers.parser(for: command.launch), for: executionId)
        logger.info("starting the agent", metadata: [
            "agent": .string(command.agent), "executable": .string(invocation.executable),
            "resume": .string(command.conversationId ?? "-"),
        ])
        let process = AgentProcess(invocation: invocation, workingDirectory: configuration.workspace, environment: agentEnvironment)
        let termination: AgentTermination
        do {
            termination = try await process.run(
                stopRequests: stopRequests,
                onStart: { pid in await self.agentStarted(executionId, pid: pid) },
                onLine: { stream, line in await self.agentLine(executionId, stream: stream, line: line) }
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

    /// How an execution ended: interrupted when it was stopped; else the agent's own report of
    /// its outcome (a failed result is a failed execution whatever the exit code), then the exit.
    static func endData(termination: AgentTermination, stopReason: String?, outcome: AgentOutcome?) -> [String: ProtocolValue] {
        var data: [String: ProtocolValue]
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

    private func stopReason(_ executionId: String) -> String? {
        guard let execution = active, execution.executionId == executionId else { return nil }
        return execution.stopReason
    }

    private func agentStarted(_ executionId: String, pid: pid_t) {
        guard var execution = active, execution.executionId == executionId else { return }
        execution.processGroup = pid
        active = execution
        record(executionId, kind: RuntimeEvent.Kind.running, data: ["pid": .number(Double(pid)), "processGroup": .number(Double(pid))])
    }

    private func agentLine(_ executionId: String, stream: AgentStream, line: String) {
        guard var execution = active, execution.executionId == executionId else { return }
        execution.progress += 1
        let line = secretMask.isEmpty ? line : secretMask.apply(line)
        let items: [AgentOutputItem] = stream == .stdout ? execution.parser.parse(line: line) : [.output]
        active = execution
        for item in items {
            switch item {
            case .agent(let data): record(executionId, kind: RuntimeEvent.Kind.agent, data: data)
            case .output: record(executionId, kind: RuntimeEvent.Kind.output, data: ["stream": .string(stream.rawValue), "line": .string(line)])
            }
        }
    }

    private func end(_ executionId: String, _ data: [String: ProtocolValue], logger: Logger) {
        guard let execution = active, execution.executionId == executionId else { return }
        execution.stops.finish()
        active = nil
        record(executionId, kind: RuntimeEvent.Kind.ended, data: data)
        logger.info("execution ended", metadata: ["status": .string(data["status"]?.stringValue ?? "")])
    }

    /// Numbers the event, keeps it until acknowledged, and sends it if the link is welcomed.
    private func record(_ executionId: String, kind: String, data: [String: ProtocolValue]) {
        let event = outbox.append(executionId: executionId, kind: kind, at: Date(), data: data)
        if let open = link, open.welcomed { open.frames.yield(ProtocolCoding.encode(.event(event))) }
    }
}
