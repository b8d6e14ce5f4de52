import CloudAgentCore
import Foundation
import Testing

/// Agents that ask: the input-request model and its rules, as pure functions of a state and `now`.
@Suite("Input requests: permissions and questions")
struct InputRequestTests {
    static let timing = Timing(
        idleTimeoutMs: seconds(10), staleThresholdMs: seconds(30), pendingTimeoutMs: seconds(120), stuckAfterMs: seconds(60),
        inputTimeoutMs: seconds(300))

    static func context(at offset: Int64) -> SessionContext {
        SessionContext(now: Fixture.at(offset), timing: timing, controlPlaneStartedAt: Fixture.t0)
    }

    static let executionId = ExecutionID(at: Fixture.at(seconds(1)))
    var seq: Int64 = 0

    /// The state after `decision`: the change applied as a store would (`SessionState.applying`).
    static func after<Output>(_ decision: Decision<Output>, _ state: SessionState) -> SessionState {
        guard let change = decision.change else { return state }
        return state.applying(change) ?? state
    }

    /// A session whose runtime is up, running an execution (running since 1 s).
    static func running(approvals: ApprovalMode = .ask) throws -> SessionState {
        var session = Fixture.session(
            runtime: Fixture.runningRuntime(since: Fixture.t0, instanceId: "instance-1", process: RuntimeProcess(pid: 4242, startTime: 99)))
        session.spec.approvals = approvals
        var state = SessionState(session: session, execution: nil)
        let started = try SessionReducer.startExecution(
            state, id: Fixture.sessionId, owner: .local, .init(id: executionId, followUp: false), context: context(at: seconds(1)))
        state = after(started, state)
        let running = try SessionReducer.ingest(
            state, instanceId: "instance-1", events: [ReportedEvent(seq: 1, executionId: executionId.rawValue, kind: .running, at: Fixture.at(seconds(1)))],
            context: context(at: seconds(1)))
        return after(running, state)
    }

    static let options: JSONValue = [
        ["id": "allow", "name": "Allow", "kind": "allow_once"],
        ["id": "always", "name": "Always allow", "kind": "allow_always"],
        ["id": "deny", "name": "Deny", "kind": "reject_once"],
    ]

    static func permission(_ id: String, tool: String = "run", seq: Int64, at offset: Int64) -> ReportedEvent {
        ReportedEvent(
            seq: seq, executionId: executionId.rawValue, kind: .inputRequested, at: Fixture.at(offset),
            data: ["requestId": .string(id), "kind": "permission", "tool": .string(tool), "input": ["command": "rm -rf build"], "options": options])
    }

    static func question(_ id: String, seq: Int64, at offset: Int64) -> ReportedEvent {
        ReportedEvent(
            seq: seq, executionId: executionId.rawValue, kind: .inputRequested, at: Fixture.at(offset),
            data: ["requestId": .string(id), "kind": "question", "question": "Which branch?", "choices": ["main", "dev"]])
    }

    /// `state` after the runtime reported `event`, with the rules evaluated as the engine does.
    static func report(_ event: ReportedEvent, to state: SessionState, at offset: Int64) throws -> (SessionState, SessionChange?) {
        let decision = try SessionReducer.ruled(
            state, try SessionReducer.ingest(state, instanceId: "instance-1", events: [event], context: context(at: offset)), rules: .afterChange,
            context: context(at: offset))
        return (after(decision, state), decision.change)
    }

    static func answer(_ state: SessionState, _ requestId: String, _ answer: InputAnswer, at offset: Int64) throws -> Decision<
        SessionReducer.Outcome<InputRequest>
    > {
        try SessionReducer.answerInput(state, id: Fixture.sessionId, owner: .local, requestId: requestId, answer: answer, context: context(at: offset))
    }

    /// The rules at `offset` (a wake-up).
    static func wake(_ state: SessionState, at offset: Int64) throws -> (SessionState, Decision<SessionReducer.Outcome<Date?>>) {
        let decision = try SessionReducer.evaluate(state, context: context(at: offset))
        return (after(decision, state), decision)
    }

    @Test("a permission request is recorded pending, with its event; the first answer wins and goes to the runtime; a second is a conflict")
    func permissionAnswered() throws {
        let (state, change) = try Self.report(Self.permission("req_1", seq: 2, at: seconds(2)), to: try Self.running(), at: seconds(2))
        #expect(change?.events.map(\.type) == [EventType.inputRequested])
        #expect(change?.events.first?.data["tool"] == "run")
        #expect(change?.events.first?.data["options"]?.arrayValue?.count == 3)
        #expect(state.session.inputs.waiting(Self.executionId)?.id == "req_1")
        // Waiting is not an answer: nothing goes to the runtime yet.
        #expect(change?.commands.isEmpty == true)

        let answered = try Self.answer(state, "req_1", .decision(allow: true, optionId: nil, always: false), at: seconds(5))
        #expect(answered.output.output.resolution == InputResolution(decision: .allow, by: .user, optionId: "allow", at: Fixture.at(seconds(5))))
        #expect(answered.change?.events.map(\.type) == [EventType.inputResolved])
        #expect(answered.change?.events.first?.data == ["requestId": "req_1", "decision": "allow", "by": "user", "optionId": "allow"])
        #expect(
            answered.change?.commands == [.answer(InputReply(executionId: Self.executionId, requestId: "req_1", decision: .allow, optionId: "allow"))])
        #expect(answered.effects == [.deliverCommands])
        let resolved = Self.after(answered, state)
        #expect(resolved.session.inputs.waiting(Self.executionId) == nil)
        #expect(resolved.session.inputs.rules.isEmpty)

        #expect(throws: SessionError.invalidState("input request req_1 was already resolved (allow by user)")) {
            try Self.answer(resolved, "req_1", .decision(allow: false, optionId: nil, always: false), at: seconds(6))
        }
        #expect(throws: SessionError.inputNotFound("req_9")) {
            try Self.answer(resolved, "req_9", .decision(allow: true, optionId: nil, always: false), at: seconds(6))
        }
        #expect(throws: SessionError.notFound(Fixture.sessionId)) {
            try SessionReducer.answerInput(
                state, id: Fixture.sessionId, owner: Owner(user: "mallory"), requestId: "req_1", answer: .decision(allow: true, optionId: nil, always: false),
                context: Self.context(at: seconds(6)))
        }
    }

    @Test("an answer of the wrong shape is refused naming the field, and changes nothing")
    func wrongShapes() throws {
        var (state, _) = try Self.report(Self.permission("req_1", seq: 2, at: seconds(2)), to: try Self.running(), at: seconds(2))
        (state, _) = try Self.report(Self.question("req_2", seq: 3, at: seconds(2)), to: state, at: seconds(2))
        let cases: [(String, InputAnswer, String)] = [
            ("req_1", .answer("yes"), "answer"),
            ("req_1", .decision(allow: true, optionId: "nope", always: false), "optionId"),
            ("req_1", .decision(allow: true, optionId: "deny", always: false), "optionId"),
            ("req_1", .decision(allow: false, optionId: "always", always: false), "optionId"),
            ("req_2", .decision(allow: true, optionId: nil, always: false), "decision"),
        ]
        for (requestId, answer, field) in cases {
            do {
                _ = try Self.answer(state, requestId, answer, at: seconds(3))
                Issue.record("\(answer) to \(requestId) was accepted")
            } catch SessionError.invalidRequest(let named, _) {
                #expect(named == field)
            }
        }
        #expect(state.session.inputs.pending.count == 2)
    }

    @Test("a question is answered with text or fields, or declined; the answer goes to the runtime")
    func question() throws {
        let (state, _) = try Self.report(Self.question("req_2", seq: 2, at: seconds(2)), to: try Self.running(), at: seconds(2))
        let text = try Self.answer(state, "req_2", .answer("dev"), at: seconds(3))
        #expect(text.output.output.resolution?.decision == .answer)
        #expect(text.change?.commands == [.answer(InputReply(executionId: Self.executionId, requestId: "req_2", decision: .answer, answer: "dev"))])
        #expect(text.change?.events.first?.data["answer"] == "dev")
        let declined = try Self.answer(state, "req_2", .decision(allow: false, optionId: nil, always: false), at: seconds(3))
        #expect(declined.output.output.resolution?.decision == .deny)
    }

    @Test("an always answer becomes the session's rule: later requests for the same tool are answered by it at once, and the event says so")
    func alwaysRule() throws {
        var (state, _) = try Self.report(Self.permission("req_1", seq: 2, at: seconds(2)), to: try Self.running(), at: seconds(2))
        let answered = try Self.answer(state, "req_1", .decision(allow: true, optionId: "always", always: false), at: seconds(3))
        #expect(answered.output.output.resolution?.optionId == "always")
        state = Self.after(answered, state)
        #expect(state.session.inputs.rules == [ApprovalRule(tool: "run", allow: true, requestId: "req_1")])

        let change: SessionChange?
        (state, change) = try Self.report(Self.permission("req_3", seq: 3, at: seconds(4)), to: state, at: seconds(4))
        #expect(change?.events.map(\.type) == [EventType.inputRequested, EventType.inputResolved])
        #expect(change?.events.last?.data["by"] == "rule")
        #expect(change?.events.last?.data["optionId"] == "always")
        #expect(change?.commands.contains(.answer(InputReply(executionId: Self.executionId, requestId: "req_3", decision: .allow, optionId: "always"))) == true)
        #expect(state.session.inputs.pending.isEmpty)

        // Another tool still asks.
        let other: SessionChange?
        (state, other) = try Self.report(Self.permission("req_4", tool: "write", seq: 4, at: seconds(5)), to: state, at: seconds(5))
        #expect(other?.events.map(\.type) == [EventType.inputRequested])
        // `always: true` with a deny: the tool is denied from now on, and the pending request of it too.
        let denied = try Self.answer(state, "req_4", .decision(allow: false, optionId: nil, always: true), at: seconds(6))
        #expect(denied.output.output.resolution?.decision == .deny)
        #expect(
            Self.after(denied, state).session.inputs.rule(
                for: InputRequest(id: "x", executionId: Self.executionId, kind: .permission, tool: "write", requestedAt: .distantPast))?.allow == false)
    }

    @Test("an execution waiting for input is never stale and never stuck, however long; the input timeout denies it to the millisecond")
    func waitingAndTimeout() throws {
        let (state, _) = try Self.report(Self.permission("req_1", seq: 2, at: seconds(2)), to: try Self.running(), at: seconds(2))
        // Long past the stale threshold (30 s) and stuckAfter (60 s), no heartbeat: nothing.
        let (_, early) = try Self.wake(state, at: seconds(2) + seconds(300) - 1)
        #expect(early.change?.events.isEmpty ?? true)
        #expect(early.output.output == Fixture.at(seconds(2) + seconds(300)))
        #expect(state.execution?.status == .running)

        let (timedOut, due) = try Self.wake(state, at: seconds(2) + seconds(300))
        #expect(due.change?.events.map(\.type) == [EventType.inputResolved])
        #expect(due.change?.events.first?.data == ["requestId": "req_1", "decision": "timeout", "by": "timeout", "optionId": "deny"])
        #expect(due.change?.commands == [.answer(InputReply(executionId: Self.executionId, requestId: "req_1", decision: .timeout, optionId: "deny"))])
        #expect(due.effects.contains(.deliverCommands))
        #expect(timedOut.execution?.status == .running)
        #expect(timedOut.session.inputs.pending.isEmpty)
        // The wait is over: the stale clock runs again from its end, not from the last heartbeat.
        #expect(due.output.output == Fixture.at(seconds(302) + seconds(30)))
        let (_, stale) = try Self.wake(timedOut, at: seconds(302) + seconds(30))
        #expect(stale.change?.events.map(\.type) == [EventType.executionFailed])
    }

    @Test("an interrupt cancels the pending requests at once; an execution that ends leaves none pending")
    func interruptAndEnd() throws {
        let (state, _) = try Self.report(Self.permission("req_1", seq: 2, at: seconds(2)), to: try Self.running(), at: seconds(2))
        let interrupted = try SessionReducer.interrupt(state, id: Fixture.sessionId, owner: .local, context: Self.context(at: seconds(3)))
        #expect(interrupted.change?.events.map(\.type) == [EventType.inputResolved])
        #expect(interrupted.change?.events.first?.data == ["requestId": "req_1", "decision": "cancelled", "by": "interrupt"])
        #expect(interrupted.change?.commands == [.kill(Self.executionId, reason: "user")])
        #expect(Self.after(interrupted, state).session.inputs.pending.isEmpty)

        // The agent exits while it waits (the runtime reports the end): the rules cancel what it left.
        let ended = ReportedEvent(seq: 3, executionId: Self.executionId.rawValue, kind: .ended, at: Fixture.at(seconds(4)), data: ["status": "completed"])
        let (after, change) = try Self.report(ended, to: state, at: seconds(4))
        #expect(change?.events.map(\.type) == [EventType.executionCompleted, EventType.inputResolved])
        #expect(change?.events.last?.data["decision"] == "cancelled")
        #expect(after.session.inputs.pending.isEmpty)
    }

    @Test("a request the agent withdraws is cancelled by the agent, with no reply; an unknown or resolved one is left alone")
    func withdrawn() throws {
        let (state, _) = try Self.report(Self.permission("req_1", seq: 2, at: seconds(2)), to: try Self.running(), at: seconds(2))
        let withdraw = ReportedEvent(
            seq: 3, executionId: Self.executionId.rawValue, kind: .inputWithdrawn, at: Fixture.at(seconds(3)), data: ["requestId": "req_1"])
        let (after, change) = try Self.report(withdraw, to: state, at: seconds(3))
        #expect(change?.events.map(\.type) == [EventType.inputResolved])
        #expect(change?.events.first?.data == ["requestId": "req_1", "decision": "cancelled", "by": "agent"])
        #expect(change?.commands.isEmpty == true)
        #expect(after.session.inputs.pending.isEmpty)
        #expect(after.execution?.status == .running)
        // The answer that comes too late is a conflict.
        #expect(throws: SessionError.self) { try Self.answer(after, "req_1", .decision(allow: true, optionId: nil, always: false), at: seconds(4)) }

        // Again, or for a request nobody made: nothing but the event's number changes.
        for (seq, id) in [(Int64(4), "req_1"), (5, "req_unknown")] {
            let again = ReportedEvent(
                seq: seq, executionId: Self.executionId.rawValue, kind: .inputWithdrawn, at: Fixture.at(seconds(5)), data: ["requestId": .string(id)])
            let (_, repeated) = try Self.report(again, to: after, at: seconds(5))
            #expect(repeated?.events.filter { $0.type == EventType.inputResolved }.isEmpty != false)
        }
    }

    @Test("a request the runtime reports is bounded: a bad id or kind is refused, a large input cut, too many pending denied by rule")
    func reportedBounds() throws {
        #expect(InputRequest(reported: ["requestId": "a b", "kind": "permission"], executionId: Self.executionId, at: Fixture.t0) == nil)
        #expect(InputRequest(reported: ["requestId": "req_1", "kind": "launch"], executionId: Self.executionId, at: Fixture.t0) == nil)
        let huge = InputRequest(
            reported: ["requestId": "req_1", "kind": "permission", "input": .string(String(repeating: "x", count: 100_000))], executionId: Self.executionId,
            at: Fixture.t0)
        #expect((huge?.input?.stringValue?.utf8.count ?? .max) <= InputRequest.maxInputBytes)

        var state = try Self.running()
        for index in 0..<InputRequest.maxPending {
            (state, _) = try Self.report(
                Self.permission("req_\(index)", tool: "tool\(index)", seq: Int64(index) + 2, at: seconds(2)), to: state, at: seconds(2))
        }
        #expect(state.session.inputs.pending.count == InputRequest.maxPending)
        let (_, change) = try Self.report(
            Self.permission("req_over", tool: "more", seq: Int64(InputRequest.maxPending) + 2, at: seconds(2)), to: state, at: seconds(2))
        #expect(change?.events.last?.data["decision"] == "deny")
        #expect(change?.events.last?.data["by"] == "rule")
    }

    @Test("the session keeps the last 50 resolved requests besides the pending ones")
    func resolvedKept() {
        var inputs = SessionInputs()
        for index in 0..<60 {
            inputs.requests.append(InputRequest(id: "r\(index)", executionId: Self.executionId, kind: .question, requestedAt: Fixture.at(Int64(index))))
            inputs.resolve("r\(index)", InputResolution(decision: .answer, by: .user, answer: "a", at: Fixture.at(Int64(index))))
        }
        inputs.requests.append(InputRequest(id: "open", executionId: Self.executionId, kind: .question, requestedAt: Fixture.at(100)))
        #expect(inputs.requests.count == 51)
        #expect(inputs.requests.first?.id == "r10")
        #expect(inputs.pending.map(\.id) == ["open"])
    }
}
