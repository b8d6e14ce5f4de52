import CloudAgentCore
import Foundation
import Testing

/// A decision and the session's rules in one change (`SessionReducer.ruled`): what one
/// transaction of the engine writes.
@Suite("Decisions with their rules")
struct RuledDecisionTests {
    static let timing = SessionReducerTests.timing

    static func context(at offset: Int64) -> SessionContext { SessionReducerTests.context(at: offset) }

    /// The reducer tests' running session (launch `instance-1`, no execution), with its stored
    /// wake-up at its idle deadline and its oldest event at t0.
    static func running() -> SessionState {
        var state = SessionReducerTests.running()
        state.oldestEventAt = Fixture.t0
        state.wakeUp = Fixture.at(minutes(15))
        return state
    }

    @Test("a message: the execution, its execute command and the next wake-up (its pending deadline) are one change")
    func messageWithItsWakeUp() throws {
        let state = Self.running()
        let id = ExecutionID(at: Fixture.at(seconds(1)))
        let decision = try SessionReducer.startExecution(
            state, id: Fixture.sessionId, owner: .local, .init(id: id, followUp: false), context: Self.context(at: seconds(1)))
        let ruled = try SessionReducer.ruled(state, decision, rules: .afterChange, context: Self.context(at: seconds(1)))
        let change = try #require(ruled.change)
        #expect(change.newExecution?.id == id)
        #expect(change.commands == [.execute(id)])
        let pendingDeadline = Fixture.at(seconds(1) + seconds(120))
        #expect(change.wakeUp == .some(pendingDeadline))
        #expect(ruled.output.output.nextWakeUp == .some(pendingDeadline))
        #expect(ruled.output.output.output.id == id)
        #expect(ruled.effects == decision.effects)
        #expect(ruled.output.notes == decision.output.notes)
        // The same as evaluating the rules after the change, in a transaction of their own.
        let written = try #require(decision.change)
        let after = try #require(state.applying(written))
        #expect(try SessionReducer.evaluate(after, context: Self.context(at: seconds(1))).output.output == pendingDeadline)
    }

    @Test("a change the rules act on at once: the rules' actions are in the same change, after the decision's")
    func rulesActInTheSameChange() throws {
        // Idle past its deadline: any change evaluates the rules, which stop the runtime.
        var state = Self.running()
        state.wakeUp = Fixture.at(minutes(15))
        let decision = try SessionReducer.edit(state, id: Fixture.sessionId, owner: .local, onlyLiveFields: true, context: Self.context(at: minutes(16))) {
            session in
            session.spec.idleTimeoutMs = minutes(10)
        }
        let ruled = try SessionReducer.ruled(
            state, decision.withoutNotes, rules: .afterChange, context: Self.context(at: minutes(16))
        )
        let change = try #require(ruled.change)
        #expect(change.session?.spec.idleTimeoutMs == minutes(10))
        #expect(change.session?.runtime.state == .stopping)
        #expect(change.session?.runtime.stopReason?.rule == .idle)
        // The settings command of the decision, then the stop the rules decided.
        #expect(change.commands == [.settings(idleTimeoutMs: minutes(10))])
        #expect(ruled.effects.first == .deliverCommands)
        #expect(ruled.effects.contains { if case .terminate = $0 { true } else { false } })
        #expect(ruled.output.notes.contains { if case .stopDecided = $0 { true } else { false } })
    }

    @Test("no change, no rules; a change that moves no deadline (progress alone) leaves them to the wake-up")
    func rulesOnlyAfterAChange() throws {
        var state = Self.running()
        let execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        state.session.activeExecutionId = execution.id
        state.session.runtime.recordAcknowledged(through: 1)
        state.execution = execution
        let nothing = try SessionReducer.ruled(
            state, Decision(output: SessionReducer.Outcome(output: (), notes: [])), rules: .afterChange, context: Self.context(at: seconds(3))
        )
        #expect(nothing.change == nil)
        #expect(nothing.output.output.nextWakeUp == nil)
        let progress = try SessionReducer.ingest(
            state, instanceId: "instance-1",
            events: [
                ReportedEvent(seq: 2, executionId: execution.id.rawValue, kind: .output, at: Fixture.at(seconds(3)))
            ], context: Self.context(at: seconds(3)))
        #expect(!progress.movesDeadlines)
        let ruled = try SessionReducer.ruled(state, progress, rules: .afterChange, context: Self.context(at: seconds(3)))
        #expect(ruled.change?.wakeUp == nil)
        // The stored wake-up stands (armed where the change was made).
        #expect(ruled.output.output.nextWakeUp == .some(state.wakeUp))
        // A wake-up firing evaluates them whatever the decision.
        let fired = try SessionReducer.ruled(
            state, Decision(output: SessionReducer.Outcome(output: (), notes: [])), rules: .always(timer: false), context: Self.context(at: seconds(3))
        )
        #expect(fired.output.output.nextWakeUp != nil)
    }

    @Test("a timer that is not due any more decides nothing; a deletion disarms")
    func timerAndDeletion() throws {
        let state = Self.running()
        let early = try SessionReducer.ruled(
            state, Decision(output: SessionReducer.Outcome(output: (), notes: [])), rules: .always(timer: true), context: Self.context(at: minutes(1))
        )
        #expect(early.change == nil)
        #expect(early.output.output.nextWakeUp == .some(state.wakeUp))
        let deletion = try SessionReducer.delete(state, id: Fixture.sessionId, owner: .local, context: Self.context(at: seconds(1)))
        let ruled = try SessionReducer.ruled(state, deletion, rules: .afterChange, context: Self.context(at: seconds(1)))
        #expect(ruled.change?.deletesSession == true)
        #expect(ruled.output.output.nextWakeUp == .some(nil))
    }

    @Test("two changes as one: the second's drops apply to the first's rows, its executions replace the first's")
    func followedBy() throws {
        let id = ExecutionID(at: Fixture.at(seconds(1)))
        let other = ExecutionID(at: Fixture.at(seconds(2)))
        var execution = Fixture.execution(acceptedAt: Fixture.at(seconds(1)))
        let first = SessionChange(
            sessionId: Fixture.sessionId, newExecution: execution, events: [NewEvent(type: "a", at: Fixture.t0)],
            commands: [.execute(execution.id), .kill(other, reason: "x"), .settings(idleTimeoutMs: 1)], dropCommands: [.settings]
        )
        try execution.end(.failed, at: Fixture.at(seconds(2)), error: "stale", reportedByRuntime: false)
        let next = SessionChange(
            sessionId: Fixture.sessionId, executions: [execution], events: [NewEvent(type: "b", at: Fixture.t0)], wakeUp: .some(nil),
            commands: [.kill(execution.id, reason: "stale")], dropCommands: [.execution(execution.id, kinds: ["execute"])]
        )
        let merged = first.followed(by: next)
        #expect(merged.newExecution?.status == .failed)
        #expect(merged.executions.isEmpty)
        #expect(merged.events.map(\.type) == ["a", "b"])
        #expect(merged.wakeUp == .some(nil))
        #expect(merged.commands == [.kill(other, reason: "x"), .settings(idleTimeoutMs: 1), .kill(execution.id, reason: "stale")])
        #expect(merged.dropCommands == [.settings, .execution(execution.id, kinds: ["execute"])])
        #expect(id != other)
        // A deletion after a change keeps the change's events (its last, sent though not kept).
        let deleted = first.followed(by: .delete(Fixture.sessionId))
        #expect(deleted.deletesSession)
        #expect(deleted.events.map(\.type) == ["a"])
    }

    @Test("the state after a change: the record, the active execution, the oldest event and the wake-up as the store reads them")
    func stateAfterAChange() throws {
        var state = Self.running()
        state.oldestEventAt = nil
        let execution = Fixture.execution(acceptedAt: Fixture.at(seconds(1)))
        var session = state.session
        session.activeExecutionId = execution.id
        let after = try #require(
            state.applying(
                SessionChange(
                    sessionId: Fixture.sessionId, session: session, newExecution: execution,
                    events: [NewEvent(type: "a", at: Fixture.at(seconds(1))), NewEvent(type: "b", at: Fixture.at(seconds(2)))]
                )))
        #expect(after.session.activeExecutionId == execution.id)
        #expect(after.execution == execution)
        #expect(after.oldestEventAt == Fixture.at(seconds(1)))
        #expect(after.wakeUp == state.wakeUp)
        let swept = try #require(after.applying(SessionChange(sessionId: Fixture.sessionId, wakeUp: .some(nil), deleteEventsBefore: Fixture.at(seconds(2)))))
        #expect(swept.oldestEventAt == nil)
        #expect(swept.wakeUp == nil)
        #expect(state.applying(.delete(Fixture.sessionId)) == nil)
    }
}

/// The eviction choice (`CapacityPolicy.victim`).
@Suite("Capacity policy")
struct CapacityPolicyTests {
    static func candidate(_ id: SessionID, startedAt offset: Int64, state: RuntimeState = .running) -> CapacityPolicy.Candidate {
        var session = SessionRecord(id: id, owner: .local, createdAt: Fixture.t0, spec: SessionSpec(prompt: "p"))
        session.runtime = Fixture.runtime(state, requestedAt: Fixture.at(offset), startedAt: Fixture.at(offset))
        return CapacityPolicy.Candidate(session: session, latestExecution: nil)
    }

    @Test("the running runtime with the oldest last activity, with no accepted execution and no auto-commit pending")
    func oldestIdleRuntime() throws {
        let a = SessionID(), b = SessionID(), c = SessionID()
        var busy = Self.candidate(a, startedAt: 0)
        busy.session.activeExecutionId = ExecutionID(at: Fixture.t0)
        var committing = Self.candidate(b, startedAt: seconds(1))
        committing.session.autoCommitPending = ExecutionID(at: Fixture.t0)
        let idle = Self.candidate(c, startedAt: seconds(5))
        #expect(CapacityPolicy.victim(candidates: [busy, committing, idle]) == c)
        #expect(CapacityPolicy.victim(candidates: [busy, committing]) == nil)
        #expect(CapacityPolicy.victim(candidates: [Self.candidate(a, startedAt: 0, state: .stopping)]) == nil)
        #expect(CapacityPolicy.victim(candidates: []) == nil)
    }

    @Test("the last activity is the latest execution's when it is later than the runtime's start")
    func lastActivityFromTheLatestExecution() throws {
        let a = SessionID(), b = SessionID()
        var recent = Self.candidate(a, startedAt: 0)
        var execution = Fixture.execution(acceptedAt: Fixture.at(seconds(10)), sessionId: a)
        try execution.markRunning(at: Fixture.at(seconds(11)))
        try execution.end(.completed, at: Fixture.at(seconds(20)), exitCode: 0, reportedByRuntime: true)
        recent.latestExecution = execution
        let older = Self.candidate(b, startedAt: seconds(5))
        #expect(CapacityPolicy.victim(candidates: [recent, older]) == b)
        #expect(recent.lastActivity == Fixture.at(seconds(20)))
        // On a tie the lower id goes first.
        let tied = [Self.candidate(a, startedAt: 0), Self.candidate(b, startedAt: 0)]
        #expect(CapacityPolicy.victim(candidates: tied) == [a, b].min { $0.rawValue < $1.rawValue })
    }
}

/// A command on a session that is not there (or not the caller's) is refused naming the session.
@Suite("Reducers name the session they were asked about")
struct ReducerSessionIdTests {
    @Test("a missing session, and another owner's, are not found with the id asked for")
    func notFoundNamesTheSession() throws {
        let context = SessionContext(now: Fixture.t0, timing: Timing(), controlPlaneStartedAt: Fixture.t0)
        let id = Fixture.otherSessionId
        let request = SessionReducer.NewExecution(id: ExecutionID(at: Fixture.t0), followUp: false)
        #expect(throws: SessionError.notFound(id)) { try SessionReducer.startExecution(nil, id: id, owner: .local, request, context: context) }
        #expect(throws: SessionError.notFound(id)) { try SessionReducer.interrupt(nil, id: id, owner: .local, context: context) }
        #expect(throws: SessionError.notFound(id)) { try SessionReducer.beginChange(nil, id: id, owner: .local, context: context) }
        #expect(throws: SessionError.notFound(id)) { try SessionReducer.delete(nil, id: id, owner: .local, context: context) }
        #expect(throws: SessionError.notFound(id)) {
            try SessionReducer.edit(nil, id: id, owner: .local, onlyLiveFields: true, context: context) { _ in }
        }
        #expect(throws: SessionError.notFound(id)) { try SessionReducer.finishChange(nil, id: id, owner: .local, restore: true, context: context, nil) }
        let theirs = SessionState(session: Fixture.session(), execution: nil)
        #expect(throws: SessionError.notFound(Fixture.sessionId)) {
            try SessionReducer.delete(theirs, id: Fixture.sessionId, owner: Owner(user: "bob"), context: context)
        }
    }
}

/// Which runtime frames move the session's deadlines (the rules evaluated in their transaction).
@Suite("Frames that move deadlines")
struct FrameDeadlineTests {
    @Test("a first connect moves the deadlines; a reconnect leaves them to the stored wake-up")
    func helloMovesDeadlinesOnce() throws {
        let context = SessionContext(now: Fixture.at(seconds(5)), timing: Timing(), controlPlaneStartedAt: Fixture.t0)
        let session = Fixture.session(runtime: .starting(RuntimeStatus.Starting(requestedAt: Fixture.t0, cold: false, instanceId: "instance-1")))
        let first = SessionReducer.hello(SessionState(session: session, execution: nil), instanceId: "instance-1", reportedActive: nil, context: context)
        #expect(first.movesDeadlines)
        let running = try #require(first.change?.session)
        let again = SessionReducer.hello(SessionState(session: running, execution: nil), instanceId: "instance-1", reportedActive: nil, context: context)
        #expect(again.change != nil)
        #expect(!again.movesDeadlines)
    }
}
