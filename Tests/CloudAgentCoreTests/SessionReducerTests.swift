import CloudAgentCore
import Foundation
import Testing

/// The session reducers on their own: a state and an input in, a change and effects out.
@Suite("Session reducers")
struct SessionReducerTests {
    static let timing = Timing(idleTimeoutMs: minutes(15), pendingTimeoutMs: seconds(120), stopGraceMs: seconds(10))

    static func context(at offset: Int64) -> SessionContext {
        SessionContext(now: Fixture.at(offset), timing: timing, controlPlaneStartedAt: Fixture.t0)
    }

    /// A session whose runtime (launch `instance-1`) connected at t0.
    static func running() -> SessionState {
        let session = Fixture.session(
            runtime: Fixture.runningRuntime(since: Fixture.t0, instanceId: "instance-1", process: RuntimeProcess(pid: 4242, startTime: 99)))
        return SessionState(session: session, execution: nil)
    }

    /// `state` after `decision`'s change (the parts these tests look at).
    static func applying<Output>(_ decision: Decision<Output>, to state: SessionState) -> SessionState {
        var next = state
        if let session = decision.change?.session { next.session = session }
        if let execution = decision.change?.newExecution { next.execution = execution }
        if let execution = decision.change?.executions.last { next.execution = execution }
        return next
    }

    @Test("initiate: the execution is accepted with its event and an execute command; a second start is a conflict")
    func initiate() throws {
        let state = Self.running()
        let id = ExecutionID(at: Fixture.at(seconds(1)))
        let decision = try SessionReducer.startExecution(
            state, id: Fixture.sessionId, owner: .local, .init(id: id, followUp: false), context: Self.context(at: seconds(1)))
        let change = try #require(decision.change)
        #expect(change.newExecution?.id == id)
        #expect(change.session?.activeExecutionId == id)
        #expect(change.session?.initiatedAt == Fixture.at(seconds(1)))
        #expect(change.events.map(\.type) == [EventType.executionStarted])
        #expect(change.commands == [.execute(id)])
        #expect(decision.effects == [.deliverCommands])
        let after = Self.applying(decision, to: state)
        #expect(throws: SessionError.executionInProgress(id)) {
            try SessionReducer.startExecution(
                after, id: Fixture.sessionId, owner: .local, .init(id: ExecutionID(at: Fixture.t0), followUp: true), context: Self.context(at: seconds(2)))
        }
        #expect(throws: SessionError.notFound(Fixture.sessionId)) {
            try SessionReducer.startExecution(
                state, id: Fixture.sessionId, owner: Owner(user: "bob"), .init(id: ExecutionID(at: Fixture.t0), followUp: false), context: Self.context(at: 0))
        }
    }

    @Test("a message to a stopped runtime starts it (a cold start with restore); to a stopping one, it waits for the stop")
    func startsTheRuntime() throws {
        var stopped = Self.running()
        stopped.session.initiatedAt = Fixture.t0
        try stopped.session.runtime.beginStopping(StopReason(rule: .idle, at: Fixture.at(seconds(5))))
        let stopping = stopped
        try stopped.session.runtime.markStopped(at: Fixture.at(seconds(6)))
        let id = ExecutionID(at: Fixture.at(seconds(7)))
        let cold = try SessionReducer.startExecution(
            stopped, id: Fixture.sessionId, owner: .local, .init(id: id, prompt: "again", followUp: true), context: Self.context(at: seconds(7)))
        #expect(cold.change?.session?.runtime.state == .starting)
        #expect(cold.effects.contains(.launch(requestedAt: Fixture.at(seconds(7)), restore: true)))
        let queued = try SessionReducer.startExecution(
            stopping, id: Fixture.sessionId, owner: .local, .init(id: id, prompt: "again", followUp: true), context: Self.context(at: seconds(7)))
        #expect(queued.change?.session?.runtime.state == .stopping)
        #expect(!queued.effects.contains { if case .launch = $0 { true } else { false } })
        // The stop is recorded: the execution accepted after it was decided survives and starts the runtime.
        let recorded = try SessionReducer.stopped(Self.applying(queued, to: stopping), context: Self.context(at: seconds(8)))
        let session = try #require(recorded.change?.session)
        #expect(session.runtime.state == .starting)
        #expect(session.activeExecutionId == id)
        #expect(recorded.change?.executions.isEmpty == true)
        #expect(recorded.change?.commands == [.execute(id)])
        #expect(recorded.change?.dropCommands == [.all])
        #expect(recorded.effects == [.released, .launch(requestedAt: Fixture.at(seconds(8)), restore: true)])
        #expect(recorded.change?.events.map(\.type) == [EventType.runtimeStopped])
    }

    @Test("eviction is decided only for a running runtime with no accepted execution")
    func evictionRechecks() throws {
        let idle = Self.running()
        let evicted = SessionReducer.evict(idle, for: Fixture.otherSessionId, context: Self.context(at: minutes(3)))
        #expect(evicted.output.output)
        let reason = try #require(evicted.change?.session?.runtime.stopReason)
        #expect(reason.rule == .evicted)
        #expect(reason.idleMs == minutes(3))
        #expect(evicted.effects == [.terminate(RuntimeProcess(pid: 4242, startTime: 99), sandbox: nil, rule: .evicted)])
        var busy = idle
        let execution = Fixture.execution(acceptedAt: Fixture.at(minutes(2)))
        busy.session.activeExecutionId = execution.id
        busy.execution = execution
        let spared = SessionReducer.evict(busy, for: Fixture.otherSessionId, context: Self.context(at: minutes(3)))
        #expect(!spared.output.output)
        #expect(spared.change == nil)
        #expect(spared.effects.isEmpty)
    }

    @Test("ingest: in order, once; a resend is only acknowledged; a gap waits for the resend")
    func ingestOrder() throws {
        var state = Self.running()
        let execution = Fixture.execution(acceptedAt: Fixture.at(seconds(1)))
        state.session.activeExecutionId = execution.id
        state.execution = execution
        let raw = execution.id.rawValue
        let first = try SessionReducer.ingest(
            state, instanceId: "instance-1",
            events: [
                ReportedEvent(seq: 1, executionId: raw, kind: .running, at: Fixture.at(seconds(2))),
                ReportedEvent(seq: 2, executionId: raw, kind: .agent, at: Fixture.at(seconds(2)), data: ["kind": "text"]),
                ReportedEvent(seq: 4, executionId: raw, kind: .agent, at: Fixture.at(seconds(2))),
            ], context: Self.context(at: seconds(2)))
        #expect(first.output.output.ack == 2)
        #expect(first.output.output.transitioned)
        #expect(first.output.notes.contains(.eventOutOfOrder(seq: 4, acked: 2)))
        #expect(first.change?.events.map(\.type) == [EventType.executionRunning, EventType.agent])
        #expect(first.change?.dropCommands == [.execution(execution.id, kinds: ["execute"])])
        let after = Self.applying(first, to: state)
        let resent = try SessionReducer.ingest(
            after, instanceId: "instance-1",
            events: [
                ReportedEvent(seq: 2, executionId: raw, kind: .agent, at: Fixture.at(seconds(2)))
            ], context: Self.context(at: seconds(3)))
        #expect(resent.change == nil)
        #expect(resent.output.output.ack == 2)
        // Another launch's frames change nothing.
        let stale = try SessionReducer.ingest(
            after, instanceId: "instance-0",
            events: [
                ReportedEvent(seq: 3, executionId: raw, kind: .agent, at: Fixture.at(seconds(2)))
            ], context: Self.context(at: seconds(3)))
        #expect(stale.change == nil)
        #expect(stale.output.output.ack == nil)
    }

    @Test("an execution's end: its callback in the same change, its outbox rows dropped; with auto-commit the callback waits")
    func ingestEnd() throws {
        var state = Self.running()
        state.session.spec.callback = CallbackSpec(url: "http://127.0.0.1:9/hook")
        let execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        state.session.activeExecutionId = execution.id
        state.execution = execution
        let ended = [
            ReportedEvent(
                seq: 1, executionId: execution.id.rawValue, kind: .ended, at: Fixture.at(seconds(3)),
                data: [
                    "status": "completed", "exitCode": 0, "conversationId": "conv-1",
                ])
        ]
        let decision = try SessionReducer.ingest(state, instanceId: "instance-1", events: ended, context: Self.context(at: seconds(3)))
        let change = try #require(decision.change)
        #expect(change.session?.activeExecutionId == nil)
        #expect(change.session?.agentConversationId == "conv-1")
        #expect(change.executions.first?.status == .completed)
        #expect(change.callbacks.map(\.executionId) == [execution.id])
        #expect(change.dropCommands == [.execution(execution.id, kinds: ["execute", "kill", "pause", "resume"])])
        #expect(decision.effects == [.deliverCallbacks])
        state.session.spec.autoCommit = true
        let committing = try SessionReducer.ingest(state, instanceId: "instance-1", events: ended, context: Self.context(at: seconds(3)))
        #expect(committing.change?.callbacks.isEmpty == true)
        #expect(committing.change?.session?.autoCommitPending == execution.id)
        #expect(committing.effects == [.autoCommit(execution.id)])
        // A conversation id that could pass for an option on the next command line is not kept.
        for hostile in ["--dangerously-skip-permissions", "-c", "a b", "x\ny", String(repeating: "a", count: 257)] {
            var forged = ended
            forged[0].data["conversationId"] = .string(hostile)
            let refused = try SessionReducer.ingest(state, instanceId: "instance-1", events: forged, context: Self.context(at: seconds(3)))
            #expect(refused.change?.session?.agentConversationId == nil, "\(hostile)")
        }
        #expect(ReportedEvent.isSafeConversationId("3f0c1c8e-1a2b-4c5d-9e8f-0123456789ab"))
        #expect(ReportedEvent.isSafeConversationId("ses_01JABCDEF:thread/1"))
        // While the auto-commit is pending the runtime is not idle and a pending execution is not timed.
        let pending = Self.applying(committing, to: state)
        let rules = try SessionReducer.evaluate(pending, context: Self.context(at: hours(2)))
        #expect(rules.output.notes.isEmpty)
        #expect(rules.change?.session == nil)
        #expect(rules.effects.isEmpty)
    }

    @Test("a transition the runtime's frames ask for that its execution cannot make is thrown, with nothing recorded")
    func invalidTransitionIsThrown() throws {
        var state = Self.running()
        let pending = Fixture.execution(acceptedAt: Fixture.at(seconds(1)))
        state.session.activeExecutionId = pending.id
        state.execution = pending
        // Completed, though never reported running: only a running execution completes.
        let ended = ReportedEvent(seq: 1, executionId: pending.id.rawValue, kind: .ended, at: Fixture.at(seconds(2)), data: ["status": "completed"])
        #expect(throws: IllegalTransition(from: "pending", to: "completed")) {
            try SessionReducer.ingest(state, instanceId: "instance-1", events: [ended], context: Self.context(at: seconds(2)))
        }
    }

    @Test("interrupt: a running execution is killed by its runtime; a pending one ends here, with a kill in case it started")
    func interrupt() throws {
        var state = Self.running()
        let running = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        state.session.activeExecutionId = running.id
        state.execution = running
        let asked = try SessionReducer.interrupt(state, id: Fixture.sessionId, owner: .local, context: Self.context(at: seconds(3)))
        #expect(asked.output.output == .asked(running.id))
        #expect(asked.change?.commands == [.kill(running.id, reason: "user")])
        #expect(asked.change?.session == nil)
        let pending = Fixture.execution(acceptedAt: Fixture.at(seconds(4)))
        state.session.activeExecutionId = pending.id
        state.execution = pending
        let ended = try SessionReducer.interrupt(state, id: Fixture.sessionId, owner: .local, context: Self.context(at: seconds(5)))
        #expect(ended.output.output == .ended(pending.id))
        #expect(ended.change?.executions.first?.status == .interrupted)
        #expect(ended.change?.session?.activeExecutionId == nil)
        #expect(ended.change?.commands == [.kill(pending.id, reason: "user")])
        #expect(ended.change?.dropCommands == [.execution(pending.id, kinds: ["execute"])])
    }

    @Test("hello: a starting runtime becomes running; a stale launch or a stopping runtime is told to go")
    func hello() throws {
        var state = Self.running()
        state.session.runtime = .starting(RuntimeStatus.Starting(requestedAt: Fixture.t0, cold: false, instanceId: "instance-2"))
        let pending = Fixture.execution(acceptedAt: Fixture.at(seconds(1)))
        state.session.activeExecutionId = pending.id
        state.execution = pending
        let welcomed = SessionReducer.hello(state, instanceId: "instance-2", reportedActive: "exec_old", context: Self.context(at: seconds(2)))
        let welcome = try #require(welcomed.output.output)
        #expect(welcome.killReported == "exec_old")
        #expect(welcome.activeExecutionId == pending.id)
        #expect(welcomed.change?.session?.runtime.state == .running)
        #expect(welcomed.change?.events.map(\.type) == [EventType.runtimeStarted])
        #expect(welcomed.change?.commands == [.execute(pending.id)])
        #expect(welcomed.change?.dropCommands == [.settings])
        #expect(SessionReducer.hello(state, instanceId: "instance-1", reportedActive: nil, context: Self.context(at: seconds(2))).output.output == nil)
        try state.session.runtime.beginStopping(StopReason(rule: .idle, at: Fixture.t0))
        #expect(SessionReducer.hello(state, instanceId: "instance-2", reportedActive: nil, context: Self.context(at: seconds(2))).output.output == nil)
    }

    @Test("a launch's id and secret are recorded before the spawn; its process is recorded only while the session has that launch")
    func launched() throws {
        var state = Self.running()
        state.session.runtime = .starting(RuntimeStatus.Starting(requestedAt: Fixture.t0, cold: false))
        let claimed = SessionReducer.launching(state, requestedAt: Fixture.t0, instanceId: "i", secretHash: "h")
        #expect(claimed.output.output)
        #expect(claimed.change?.session?.runtime.secretHash == "h")
        #expect(!SessionReducer.launching(state, requestedAt: Fixture.at(-1), instanceId: "i", secretHash: "h").output.output)
        state = Self.applying(claimed, to: state)
        // The runtime may connect before its process is recorded.
        let welcomed = Self.applying(SessionReducer.hello(state, instanceId: "i", reportedActive: nil, context: Self.context(at: seconds(29))), to: state)
        #expect(welcomed.session.runtime.state == .running)
        let launch = SessionReducer.Launch(instanceId: "i", process: RuntimeProcess(pid: 7, startTime: 1), sandbox: "none")
        let recorded = try SessionReducer.launched(welcomed, launch, setupFailures: [], context: Self.context(at: seconds(30)))
        #expect(recorded.output.output)
        #expect(recorded.change?.session?.runtime.process == launch.process)
        #expect(recorded.change?.session?.runtime.launchedAt == Fixture.at(seconds(30)))
        let other = SessionReducer.Launch(instanceId: "j", process: RuntimeProcess(pid: 8, startTime: 1), sandbox: "none")
        let superseded = try SessionReducer.launched(state, other, setupFailures: [], context: Self.context(at: seconds(30)))
        #expect(!superseded.output.output)
        #expect(superseded.effects == [.discardLaunch(other.process, sandbox: "none")])
        let deleted = try SessionReducer.launched(nil, launch, setupFailures: [], context: Self.context(at: seconds(30)))
        #expect(deleted.effects == [.discardLaunch(launch.process, sandbox: "none"), .removed(.deleted)])
    }

    @Test("the rules: an idle stop is one change with its wake-up cleared of the idle deadline, and the stop is decided once")
    func rulesDecideOnce() throws {
        var state = Self.running()
        state.session.initiatedAt = Fixture.t0
        let decided = try SessionReducer.evaluate(state, context: Self.context(at: minutes(15)))
        let session = try #require(decided.change?.session)
        #expect(session.runtime.state == .stopping)
        #expect(session.runtime.stopReason?.rule == .idle)
        #expect(decided.effects == [.terminate(RuntimeProcess(pid: 4242, startTime: 99), sandbox: nil, rule: .idle)])
        let again = try SessionReducer.evaluate(Self.applying(decided, to: state), context: Self.context(at: minutes(15)))
        #expect(again.effects.isEmpty)
    }

    @Test("delete: the record goes with the deletion's own runtime.stopped, and the processes and files follow")
    func delete() throws {
        let state = Self.running()
        let decision = try SessionReducer.delete(state, id: Fixture.sessionId, owner: .local, context: Self.context(at: seconds(1)))
        #expect(decision.change?.deletesSession == true)
        #expect(decision.change?.events.last?.type == EventType.runtimeStopped)
        #expect(decision.change?.events.last?.data["rule"] == "deleted")
        #expect(decision.effects == [.terminate(RuntimeProcess(pid: 4242, startTime: 99), sandbox: nil, rule: .deleted), .removed(.deleted)])
        #expect(throws: SessionError.notFound(Fixture.sessionId)) {
            try SessionReducer.delete(state, id: Fixture.sessionId, owner: Owner(user: "bob"), context: Self.context(at: 0))
        }
    }
}
