import CloudAgentAgents
import CloudAgentProtocol
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Executions of ACP agents (`AgentLaunch.isACP`): the runtime is the agent's Agent Client
/// Protocol client (docs/acp.md).
///
/// The agent process and its ACP session live as long as the runtime: the first execution starts
/// the agent, `initialize`s it and opens a session (`session/new`, or `session/load` /
/// `session/resume` of the session's earlier ACP session after a cold start, when the agent offers
/// it and still knows it); each execution is one `session/prompt`. An interrupt sends
/// `session/cancel`, and after half the grace signals the agent and all it started (SIGTERM,
/// SIGKILL after the other half): an agent that does not stop its turn does not outlive the stop.
extension AgentRuntime {
    /// How an ACP execution's turn ended.
    enum ACPTurnEnd: Sendable {
        /// The agent answered `session/prompt`.
        case answered(Result<JSONValue, ACPError>, session: String)
        /// A step before or during the prompt failed.
        case failed(ACPConnection.Failure, step: String, session: String?)
    }

    nonisolated func runACPExecution(_ command: ExecuteCommand, launch: AgentLaunch, stopRequests: AsyncStream<Duration>, logger: Logger) async {
        let executionId = command.executionId
        await beginACPTurn(executionId, readOnly: AgentMode.isReadOnly(command.mode))
        let connection: ACPConnection
        do {
            connection = try await acpConnection(for: command, launch: launch, logger: logger)
        } catch {
            await end(executionId, ["status": .string("failed"), "error": .string("could not start agent \(command.agent): \(error)")], logger: logger)
            return
        }
        await agentStarted(executionId, pid: connection.pid)
        logger.info(
            "prompting the ACP agent",
            metadata: [
                "agent": .string(command.agent), "pid": "\(connection.pid)", "resume": .string(command.conversationId ?? "-"),
            ])
        let timeout = Duration.milliseconds(max(launch.timeoutMs ?? AgentLaunch.defaultACPTimeoutMs, 1))
        let turn = await withTaskGroup(of: ACPTurnEnd?.self) { group in
            group.addTask {
                await self.watchACPStops(stopRequests, connection: connection, executionId: executionId)
                return nil
            }
            group.addTask { await self.acpTurn(command, connection: connection, timeout: timeout) }
            var ended: ACPTurnEnd?
            for await result in group where result != nil {
                ended = result
                group.cancelAll()
            }
            return ended ?? .failed(.notStarted("the turn did not end"), step: "session/prompt", session: nil)
        }
        await finishACPTurn(command, turn: turn, connection: connection, logger: logger)
    }

    // MARK: The agent process

    /// The running agent for `launch`, started (and its old one closed) when there is none.
    private func acpConnection(for command: ExecuteCommand, launch: AgentLaunch, logger: Logger) async throws(ACPConnection.Failure) -> ACPConnection {
        if let existing = acp {
            if existing.launch == launch, await !existing.hasExited { return existing }
            acp = nil
            await existing.close(grace: stopGrace)
        }
        let invocation: AgentInvocation
        do {
            invocation = try agents.invocation(for: command, environment: agentEnvironment)
        } catch {
            throw .notStarted(error.description)
        }
        logger.info("starting the ACP agent", metadata: ["agent": .string(command.agent), "executable": .string(invocation.executable)])
        let connection = try await ACPConnection.start(
            invocation: invocation, launch: launch, workingDirectory: configuration.workspace, environment: agentEnvironment,
            secretMask: secretMask, logger: logger, handler: { [weak self] inbound in await self?.acpInbound(inbound) }
        )
        acp = connection
        acpCostUsd = nil
        return connection
    }

    /// Closes the agent at the runtime's end.
    func closeACP(grace: Duration) async {
        guard let connection = acp else { return }
        acp = nil
        await connection.close(grace: grace)
    }

    /// Drops an agent that can no longer be trusted to answer (it timed out): killed, and the
    /// next execution starts a new one.
    private func discardACP(_ connection: ACPConnection) async {
        if acp === connection {
            acp = nil
            acpCostUsd = nil
        }
        await connection.kill(grace: min(stopGrace, .seconds(2)))
    }

    // MARK: One turn

    private nonisolated func acpTurn(_ command: ExecuteCommand, connection: ACPConnection, timeout: Duration) async -> ACPTurnEnd {
        let executionId = command.executionId
        var step = "initialize"
        var session: String?
        do {
            let capabilities = try await connection.initialize(timeout: timeout)
            step = "opening the ACP session"
            let opened = try await openACPSession(command, connection: connection, capabilities: capabilities, timeout: timeout)
            session = opened.id
            try await applyModeAndModel(command, connection: connection, session: opened, timeout: timeout)
            step = "session/prompt"
            await promptStarted(executionId, session: opened.id)
            let prompt: JSONValue = ["sessionId": .string(opened.id), "prompt": [["type": "text", "text": .string(command.prompt)]]]
            do {
                return .answered(.success(try await connection.request("session/prompt", prompt)), session: opened.id)
            } catch .agent(let error) {
                return .answered(.failure(error), session: opened.id)
            }
        } catch {
            return .failed(error, step: step, session: session)
        }
    }

    /// The session this process serves when it is the execution's conversation; else the earlier
    /// one loaded or resumed when the agent offers it; else a new one (saying why in an event).
    private nonisolated func openACPSession(
        _ command: ExecuteCommand, connection: ACPConnection, capabilities: ACPConnection.Capabilities, timeout: Duration
    ) async throws(ACPConnection.Failure) -> ACPConnection.OpenSession {
        let executionId = command.executionId
        let previous = command.conversationId.flatMap { $0.isEmpty ? nil : $0 }
        if let current = await connection.session, previous == nil || previous == current.id { return current }
        // The session's MCP servers: HTTP ones only where the agent takes them (its capabilities).
        let mcp = MCPServer.acpServers(MCPServer.servers(command.mcpServers, environment: agentEnvironment), http: capabilities.mcpHTTP)
        if !mcp.leftOut.isEmpty {
            await recordACPLog(
                executionId, "MCP servers left out: the agent does not take MCP servers over HTTP: \(mcp.leftOut.joined(separator: ", "))",
                ["mcpServersLeftOut": .array(mcp.leftOut.map { .string($0) })])
        }
        let place: JSONValue = ["cwd": .string(configuration.workspace), "mcpServers": mcp.servers]
        var whyNot: String
        if let previous {
            let method = capabilities.loadSession ? "session/load" : capabilities.resumeSession ? "session/resume" : nil
            if let method {
                var params = place
                if case .object(var object) = params { object["sessionId"] = .string(previous); params = .object(object) }
                // A loaded session's history comes back as updates: they are not this execution's.
                await setReplaying(executionId, true)
                do {
                    let answer = try await connection.request(method, params, timeout: timeout)
                    await setReplaying(executionId, false)
                    let session = ACPConnection.OpenSession(id: previous, answer: answer)
                    await connection.opened(session)
                    await recordACPLog(
                        executionId, "ACP session \(previous) resumed (\(method))", ["acpSession": .string(previous), "method": .string(method)])
                    return session
                } catch .agent(let error) {
                    await setReplaying(executionId, false)
                    whyNot = "\(method) failed: \(error)"
                } catch {
                    await setReplaying(executionId, false)
                    throw error
                }
            } else {
                whyNot = "the agent offers neither session/load nor session/resume"
            }
        } else {
            whyNot = ""
        }
        let answer = try await connection.request("session/new", place, timeout: timeout)
        guard let id = answer["sessionId"]?.stringValue, !id.isEmpty else {
            throw .agent(ACPError(code: ACPError.internalError, message: "session/new answered without a sessionId"))
        }
        let session = ACPConnection.OpenSession(id: id, answer: answer)
        await connection.opened(session)
        if let previous {
            await recordACPLog(
                executionId, "a new ACP session \(id): the earlier one (\(previous)) could not be resumed: \(whyNot)",
                ["acpSession": .string(id), "previousAcpSession": .string(previous), "reason": .string(whyNot)]
            )
        }
        return session
    }

    /// The execution's mode when the agent offers it (a read-only one as the agent's `plan` mode,
    /// when it has one), else the session's own; its model when the agent offers it.
    private nonisolated func applyModeAndModel(
        _ command: ExecuteCommand, connection: ACPConnection, session: ACPConnection.OpenSession, timeout: Duration
    ) async throws(ACPConnection.Failure) {
        let executionId = command.executionId
        let asked = command.mode.flatMap { $0.isEmpty ? nil : $0 }
        var wanted = session.defaultMode
        if let asked {
            if session.modeIds.contains(asked) {
                wanted = asked
            } else if AgentMode.isReadOnly(asked) {
                if let readOnly = session.modeIds.first(where: AgentMode.isReadOnly) {
                    wanted = readOnly
                } else {
                    await recordACPLog(
                        executionId, "the agent offers no read-only mode: its permission requests are rejected instead", ["mode": .string(asked)])
                }
            }
        }
        if let wanted, wanted != session.currentMode {
            do {
                _ = try await connection.request("session/set_mode", ["sessionId": .string(session.id), "modeId": .string(wanted)], timeout: timeout)
                await connection.modeChanged(to: wanted)
            } catch .agent(let error) {
                await recordACPLog(executionId, "the agent refused mode \(wanted): \(error)", ["mode": .string(wanted)])
            }
        }
        if let model = command.model.flatMap({ $0.isEmpty ? nil : $0 }) {
            if session.modelIds.contains(model) {
                do {
                    _ = try await connection.request("session/set_model", ["sessionId": .string(session.id), "modelId": .string(model)], timeout: timeout)
                } catch .agent(let error) {
                    await recordACPLog(executionId, "the agent refused model \(model): \(error)", ["model": .string(model)])
                }
            } else {
                let offered = session.modelIds.isEmpty ? "it names none" : "it offers " + session.modelIds.joined(separator: ", ")
                await recordACPLog(executionId, "the agent cannot be set to model \(model) (\(offered)): it uses its own", ["model": .string(model)])
            }
        }
    }

    /// An interrupt (or the runtime's stop): `session/cancel` once the prompt is out, then after
    /// half the grace SIGTERM to the agent's tree, SIGKILL after the other half. Before the
    /// prompt there is nothing to cancel: the agent is signalled at once.
    private nonisolated func watchACPStops(_ stopRequests: AsyncStream<Duration>, connection: ACPConnection, executionId: String) async {
        for await grace in stopRequests {
            guard let session = await promptSession(executionId) else {
                await connection.kill(grace: grace)
                continue
            }
            await connection.notify("session/cancel", ["sessionId": .string(session)])
            try? await Task.sleep(for: grace / 2)
            // The turn ended (cancelled, as asked): the agent stays for the next execution.
            if Task.isCancelled { return }
            await connection.kill(grace: grace / 2)
        }
    }

    private func finishACPTurn(_ command: ExecuteCommand, turn: ACPTurnEnd, connection: ACPConnection, logger: Logger) async {
        let executionId = command.executionId
        guard var execution = active, execution.executionId == executionId else { return }
        var reader = execution.acpTurn ?? ACPTurnReader()
        let remaining = reader.flush()
        execution.acpTurn = reader
        active = execution
        for data in remaining { record(executionId, kind: RuntimeEvent.Kind.agent, data: data) }
        var data: [String: JSONValue]
        var session: String?
        switch turn {
        case .answered(let answer, let id):
            session = id
            switch ACPTurnOutcome.outcome(answer, finalMessage: reader.finalMessage) {
            case .succeeded:
                data = ["status": .string("completed")]
            case .failed(let message):
                data = ["status": .string("failed"), "error": .string(message)]
                record(executionId, kind: RuntimeEvent.Kind.agent, data: ["kind": .string("error"), "message": .string(message), "raw": .string(message)])
            }
            if let stopReason = try? answer.get()["stopReason"]?.stringValue { data["stopReason"] = .string(stopReason) }
            if let usage = ACPUsage.data(result: try? answer.get(), costUsd: turnCost(reader)) {
                record(executionId, kind: RuntimeEvent.Kind.usage, data: usage)
            }
            acpCostUsd = reader.sessionCostUsd ?? acpCostUsd
        case .failed(let failure, let step, let id):
            session = id
            var message: String
            switch failure {
            case .exited(let termination):
                message = "the agent exited during \(step) (\(termination.words))"
                switch termination {
                case .exited(let code): data = ["exitCode": .number(Double(code))]
                case .signaled(let signal): data = ["signal": .string(ProcessGroup.signalName(signal))]
                }
            case .timedOut:
                message = "\(failure) (ACP)"
                data = [:]
                await discardACP(connection)
            case .agent(let error):
                message = "the agent failed \(step): \(error)"
                data = [:]
            case .notStarted(let why):
                message = why
                data = [:]
            }
            data["status"] = .string("failed")
            data["error"] = .string(message)
        }
        if let reason = stopReason(executionId) {
            data["status"] = .string("interrupted")
            data["interruptReason"] = .string(reason)
            data["error"] = nil
        }
        if let session { data[RuntimeEvent.conversationIdKey] = .string(session) }
        end(executionId, data, logger: logger)
    }

    /// What the ACP session's cost grew by during this turn (nil when the agent said nothing of it).
    private func turnCost(_ reader: ACPTurnReader) -> Double? {
        reader.sessionCostUsd.map { max(0, $0 - (acpCostUsd ?? 0)) }
    }

    // MARK: What the agent sends

    /// Everything the agent writes that is not an answer: recorded as the active execution's
    /// events (nothing runs between executions, so what comes then is only logged).
    func acpInbound(_ inbound: ACPConnection.Inbound) async -> JSONValue? {
        switch inbound {
        case .update(let update, let raw):
            await waitForRoom()
            guard var execution = active, var reader = execution.acpTurn, !execution.acpReplaying else { return nil }
            guard !outbox.isFull else {
                droppedLines += 1
                return nil
            }
            let costBefore = reader.sessionCostUsd
            let events = reader.read(update: update, raw: raw)
            execution.acpTurn = reader
            // The cost so far, as the agent reports it: a budget sees it during the turn.
            if reader.sessionCostUsd != costBefore, let cost = turnCost(reader) {
                record(execution.executionId, kind: RuntimeEvent.Kind.usage, data: AgentUsage.data(input: 0, output: 0, costUsd: cost))
            }
            execution.progress += 1
            execution.acpLastUpdateAt = .now
            let scheduleFlush = reader.isGathering && !execution.acpFlushScheduled
            if scheduleFlush { execution.acpFlushScheduled = true }
            active = execution
            for data in events { record(execution.executionId, kind: RuntimeEvent.Kind.agent, data: data) }
            if scheduleFlush {
                let executionId = execution.executionId
                Task { await self.flushWhenQuiet(executionId) }
            }
        case .permission(let params, let raw):
            guard var execution = active, var reader = execution.acpTurn else {
                logger.info("an ACP permission request outside an execution: cancelled")
                return ["outcome": ["outcome": "cancelled"]]
            }
            if execution.asks, !execution.readOnly {
                // approvals ask: the request goes to the user; the agent waits for the answer.
                let answer = await askUser(ACPPermissions.inputRequest(params))
                return ACPPermissions.result(params, decision: answer?.decision ?? "cancelled", optionId: answer?.optionId)
            }
            let decision = ACPPermissions.decide(params, approvals: .auto, readOnly: execution.readOnly, raw: raw)
            let gathered = reader.flush()
            execution.acpTurn = reader
            execution.progress += 1
            active = execution
            for data in gathered + [decision.event] { record(execution.executionId, kind: RuntimeEvent.Kind.agent, data: data) }
            logger.info(
                "ACP permission decided",
                metadata: [
                    "executionId": .string(execution.executionId), "decision": .string(decision.event["permission"]?["decision"]?.stringValue ?? "-"),
                ])
            return decision.result
        case .elicitation(let params, _):
            guard active?.acpTurn != nil else {
                logger.info("an ACP elicitation outside an execution: cancelled")
                return ACPElicitation.result(decision: "cancelled", answer: nil, params: params)
            }
            // A question: it goes to the user whatever the approvals.
            let answer = await askUser(ACPElicitation.inputRequest(params))
            return ACPElicitation.result(decision: answer?.decision ?? "cancelled", answer: answer?.answer, params: params)
        case .output(let stream, let line):
            guard let execution = active, execution.acpTurn != nil else {
                logger.debug("ACP agent output between executions", metadata: ["stream": .string(stream.rawValue), "line": .string(String(line.prefix(500)))])
                return nil
            }
            // As any agent's line: its parser (plain text, set by `beginACPTurn`) makes it output.
            await agentLine(execution.executionId, stream: stream, line: line)
        case .overlong(let bytes):
            let message = "the agent sent a message of \(bytes) bytes, over the limit of \(ACPConnection.maxMessageBytes): dropped"
            logger.warning("ACP message over the limit: dropped", metadata: ["bytes": "\(bytes)"])
            if let execution = active, execution.acpTurn != nil {
                record(
                    execution.executionId, kind: RuntimeEvent.Kind.agent,
                    data: ["kind": .string("error"), "message": .string(message), "raw": .string(message)])
            }
        case .exited(let termination):
            logger.notice(
                "the ACP agent exited", metadata: ["termination": .string(termination.words), "activeExecutionId": .string(active?.executionId ?? "-")])
        }
        return nil
    }

    /// Text the agent has gathered goes out once it has said nothing for this long.
    static let acpQuietFlush = Duration.milliseconds(400)

    /// Waits until no update has come for `acpQuietFlush`, then records the gathered text.
    private func flushWhenQuiet(_ executionId: String) async {
        while true {
            guard let execution = active, execution.executionId == executionId, execution.acpFlushScheduled else { return }
            let due = execution.acpLastUpdateAt + Self.acpQuietFlush
            if ContinuousClock.now >= due { break }
            try? await Task.sleep(until: due, clock: .continuous)
        }
        guard var execution = active, execution.executionId == executionId, var reader = execution.acpTurn else { return }
        let events = reader.flush()
        execution.acpTurn = reader
        execution.acpFlushScheduled = false
        active = execution
        for data in events { record(executionId, kind: RuntimeEvent.Kind.agent, data: data) }
    }

    // MARK: The active execution's ACP state

    /// The agent's request goes to the user (after the text gathered so far), and the agent
    /// waits for the answer; nil when the execution is gone.
    private func askUser(_ request: [String: JSONValue]) async -> InputAnswerFrame? {
        guard var execution = active, var reader = execution.acpTurn else { return nil }
        let gathered = reader.flush()
        execution.acpTurn = reader
        execution.progress += 1
        active = execution
        for data in gathered { record(execution.executionId, kind: RuntimeEvent.Kind.agent, data: data) }
        let (answers, answered) = AsyncStream.makeStream(of: InputAnswerFrame.self)
        requestInput(execution.executionId, request) { answer in
            answered.yield(answer)
            answered.finish()
        }
        for await answer in answers { return answer }
        return nil
    }

    private func beginACPTurn(_ executionId: String, readOnly: Bool) {
        guard var execution = active, execution.executionId == executionId else { return }
        execution.acpTurn = ACPTurnReader()
        // Lines that are not JSON-RPC, and stderr, go through `agentLine` as output.
        execution.parser = PlainTextParser()
        execution.readOnly = readOnly
        active = execution
    }

    private func setReplaying(_ executionId: String, _ replaying: Bool) {
        guard var execution = active, execution.executionId == executionId else { return }
        execution.acpReplaying = replaying
        active = execution
    }

    private func promptStarted(_ executionId: String, session: String) {
        guard var execution = active, execution.executionId == executionId else { return }
        execution.acpPromptSession = session
        active = execution
    }

    /// The ACP session the execution's prompt went to; nil before the prompt.
    private func promptSession(_ executionId: String) -> String? {
        guard let execution = active, execution.executionId == executionId else { return nil }
        return execution.acpPromptSession
    }

    private func recordACPLog(_ executionId: String, _ message: String, _ extra: [String: JSONValue]) {
        guard let execution = active, execution.executionId == executionId else { return }
        var data: [String: JSONValue] = ["kind": .string("log"), "message": .string(message), "raw": .string(message)]
        data.merge(extra) { own, _ in own }
        record(executionId, kind: RuntimeEvent.Kind.agent, data: data)
    }
}
