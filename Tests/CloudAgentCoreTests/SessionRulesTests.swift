import CloudAgentCore
import Foundation
import Testing

/// the design's "Timers are data" (docs/architecture.md): each session has one next wake-up, the earliest of its
/// pending/stale/idle deadlines, its TTL and its event-retention sweep.
@Suite("Session rules: a session's actions and its one next wake-up")
struct SessionRulesTests {
    let controlPlaneStartedAt = Fixture.t0

    func evaluate(_ snapshot: SessionSnapshot, timing: Timing = Timing(), now: Date) -> SessionEvaluation {
        SessionRules.evaluate(snapshot, timing: timing, controlPlaneStartedAt: controlPlaneStartedAt, now: now)
    }

    struct WakeUpCase: Sendable, CustomTestStringConvertible {
        var name: String
        var runtimeRunning: Bool
        var sessionTTLMs: Int64
        var eventRetentionMs: Int64
        /// The expected wake-up, after t0.
        var expected: Int64
        var testDescription: String { name }
    }

    // The scenario: runtime up at t0 (first event at t0), an execution that ended at t0+1h
    // (the session last touched then), evaluated at t0+65min. The stopped variant was stopped
    // by an operator at t0+61min. Idle deadline t0+75min.
    static let wakeUpCases: [WakeUpCase] = [
        WakeUpCase(
            name: "idle deadline first (TTL ignored while the runtime runs)", runtimeRunning: true,
            sessionTTLMs: minutes(2), eventRetentionMs: days(1), expected: minutes(75)),
        WakeUpCase(
            name: "event sweep first, runtime running", runtimeRunning: true,
            sessionTTLMs: days(90), eventRetentionMs: minutes(70), expected: minutes(70)),
        WakeUpCase(
            name: "TTL first, runtime stopped", runtimeRunning: false,
            sessionTTLMs: hours(1), eventRetentionMs: days(1), expected: hours(2)),
        WakeUpCase(
            name: "event sweep first, runtime stopped", runtimeRunning: false,
            sessionTTLMs: days(1), eventRetentionMs: minutes(90), expected: minutes(90)),
    ]

    @Test("the next wake-up is the earliest of the idle deadline, TTL and event sweep", arguments: wakeUpCases)
    func nextWakeUpIsTheEarliestDeadline(_ scenario: WakeUpCase) throws {
        let timing = Timing(idleTimeoutMs: minutes(15), sessionTTLMs: scenario.sessionTTLMs, eventRetentionMs: scenario.eventRetentionMs)
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        let completedAt = Fixture.at(hours(1))
        try execution.end(.completed, at: completedAt, exitCode: 0, reportedByRuntime: true)
        var runtime = Fixture.runningRuntime(since: Fixture.t0)
        if !scenario.runtimeRunning {
            try runtime.markStopped(at: Fixture.at(minutes(61)), reason: StopReason(rule: .operator, at: Fixture.at(minutes(61))))
        }
        var session = Fixture.session(runtime: runtime)
        session.updatedAt = completedAt
        session.executionCount = 1
        let snapshot = SessionSnapshot(session: session, latestExecution: execution, oldestEventAt: Fixture.t0)

        let evaluation = evaluate(snapshot, timing: timing, now: Fixture.at(minutes(65)))
        #expect(evaluation.actions.isEmpty)
        #expect(evaluation.nextWakeUp == Fixture.at(scenario.expected))
    }

    @Test("a session untouched for the TTL expires exactly at updatedAt + sessionTTL")
    func expireAtTTL() {
        let timing = Timing()
        var session = Fixture.session()
        let updatedAt = Fixture.at(hours(1))
        session.updatedAt = updatedAt
        let snapshot = SessionSnapshot(session: session, latestExecution: nil, oldestEventAt: nil)
        let expiry = updatedAt.adding(milliseconds: timing.sessionTTLMs)

        let before = evaluate(snapshot, now: expiry.adding(milliseconds: -1))
        #expect(before.actions.isEmpty)
        #expect(before.nextWakeUp == expiry)

        let atExpiry = evaluate(snapshot, now: expiry)
        #expect(atExpiry.actions == [.expire(untouchedMs: timing.sessionTTLMs)])
        #expect(atExpiry.nextWakeUp == nil)
    }

    @Test("the TTL never expires a session whose runtime is up", arguments: [RuntimeState.starting, .running, .stopping])
    func noTTLWhileRuntimeIsUp(state: RuntimeState) {
        let timing = Timing()
        let runtime = Fixture.runtime(state, requestedAt: Fixture.t0, startedAt: Fixture.t0)
        let snapshot = SessionSnapshot(session: Fixture.session(runtime: runtime), latestExecution: nil, oldestEventAt: nil)
        let now = Fixture.at(timing.sessionTTLMs + days(1))
        let evaluation = evaluate(snapshot, now: now)
        #expect(!evaluation.actions.contains { if case .expire = $0 { true } else { false } })
        #expect(evaluation.nextWakeUp != Fixture.at(timing.sessionTTLMs))
    }

    @Test("the TTL never expires a session with an active execution, even with its runtime stopped")
    func noTTLWhileAnExecutionIsActive() {
        let timing = Timing()
        let execution = Fixture.execution(acceptedAt: Fixture.at(seconds(1)))
        var session = Fixture.session()
        session.activeExecutionId = execution.id
        session.executionCount = 1
        let snapshot = SessionSnapshot(session: session, latestExecution: execution, oldestEventAt: nil)
        // The pending execution's own deadline is the only one.
        let pendingDeadline = Fixture.at(seconds(1) + timing.pendingTimeoutMs)
        #expect(evaluate(snapshot, now: Fixture.at(seconds(2))).nextWakeUp == pendingDeadline)
        let late = evaluate(snapshot, now: Fixture.at(timing.sessionTTLMs + days(1)))
        #expect(!late.actions.contains { if case .expire = $0 { true } else { false } })
    }

    @Test("events older than the retention are swept: olderThan = now - eventRetention")
    func sweepEvents() {
        // A retention shorter than the TTL, so that the sweep is the session's only due deadline.
        let timing = Timing(eventRetentionMs: days(1))
        let oldest = Fixture.at(minutes(1))
        let snapshot = SessionSnapshot(session: Fixture.session(), latestExecution: nil, oldestEventAt: oldest)
        let sweepAt = oldest.adding(milliseconds: timing.eventRetentionMs)

        let before = evaluate(snapshot, timing: timing, now: sweepAt.adding(milliseconds: -1))
        #expect(before.actions.isEmpty)
        #expect(before.nextWakeUp == sweepAt)

        let now = sweepAt.adding(milliseconds: minutes(5))
        let evaluation = evaluate(snapshot, timing: timing, now: now)
        #expect(evaluation.actions == [.sweepEvents(olderThan: now.adding(milliseconds: -timing.eventRetentionMs))])
        #expect(evaluation.actions == [.sweepEvents(olderThan: oldest.adding(milliseconds: minutes(5)))])
    }

    /// A runtime launched (its process started) at `launchedAt`, not connected yet.
    private func launched(requestedAt: Date, launchedAt: Date) -> RuntimeStatus {
        .starting(RuntimeStatus.Starting(requestedAt: requestedAt, cold: false, launchedAt: launchedAt, process: RuntimeProcess(pid: 4242, startTime: 1)))
    }

    @Test("a starting runtime that does not connect within the pending timeout of its launch is stopped as crashed")
    func startingRuntimeThatNeverConnects() throws {
        let timing = Timing()
        let requestedAt = Fixture.at(minutes(1))
        let runtime = launched(requestedAt: requestedAt, launchedAt: requestedAt)
        let snapshot = SessionSnapshot(session: Fixture.session(runtime: runtime), latestExecution: nil, oldestEventAt: nil)
        let deadline = requestedAt.adding(milliseconds: timing.pendingTimeoutMs)

        let before = evaluate(snapshot, now: deadline.adding(milliseconds: -1))
        #expect(before.actions.isEmpty)
        #expect(before.nextWakeUp == deadline)
        #expect(before.idle == .notRunning)

        let atDeadline = evaluate(snapshot, now: deadline)
        #expect(atDeadline.actions.count == 1)
        let action = try #require(atDeadline.actions.first)
        guard case .stopRuntime(let reason) = action else {
            Issue.record("expected .stopRuntime, got \(action)")
            return
        }
        #expect(reason.rule == .crashed)
        #expect(reason.at == deadline)
    }

    @Test("a control-plane restart gives a starting runtime the full pending timeout again")
    func startingRuntimeAcrossRestart() {
        let timing = Timing()
        let requestedAt = Fixture.at(minutes(1))
        let restartedAt = Fixture.at(minutes(10))
        let runtime = launched(requestedAt: requestedAt, launchedAt: requestedAt)
        let snapshot = SessionSnapshot(session: Fixture.session(runtime: runtime), latestExecution: nil, oldestEventAt: nil)
        let evaluation = SessionRules.evaluate(snapshot, timing: timing, controlPlaneStartedAt: restartedAt, now: restartedAt)
        #expect(evaluation.actions.isEmpty)
        #expect(evaluation.nextWakeUp == restartedAt.adding(milliseconds: timing.pendingTimeoutMs))
    }

    @Test(
        "a cold start being prepared (restore and setup commands, no process yet) has no pending deadline; once launched, both the runtime's and its pending execution's count from the launch"
    )
    func coldStartDeadlinesCountFromTheLaunch() throws {
        let timing = Timing()
        let requestedAt = Fixture.at(minutes(1))
        let execution = Fixture.execution(acceptedAt: requestedAt)
        var session = Fixture.session(runtime: .starting(RuntimeStatus.Starting(requestedAt: requestedAt, cold: false)))
        session.activeExecutionId = execution.id
        session.executionCount = 1
        // Twenty minutes of setup commands: nothing fails and nothing is due (the launch that
        // ends the preparation evaluates the session again).
        let preparing = evaluate(SessionSnapshot(session: session, latestExecution: execution, oldestEventAt: nil), now: Fixture.at(minutes(21)))
        #expect(preparing.actions.isEmpty)
        #expect(preparing.nextWakeUp == nil)

        let launchedAt = Fixture.at(minutes(21))
        session.runtime = launched(requestedAt: requestedAt, launchedAt: launchedAt)
        let snapshot = SessionSnapshot(session: session, latestExecution: execution, oldestEventAt: nil)
        let deadline = launchedAt.adding(milliseconds: timing.pendingTimeoutMs)
        let before = evaluate(snapshot, now: deadline.adding(milliseconds: -1))
        #expect(before.actions.isEmpty)
        #expect(before.nextWakeUp == deadline)
        let after = evaluate(snapshot, now: deadline)
        #expect(after.actions.contains { if case .failExecution(execution.id, _) = $0 { true } else { false } })
        #expect(after.actions.contains { if case .stopRuntime(let reason) = $0 { reason.rule == .crashed } else { false } })
    }

    @Test("a stale running execution is failed, and the runtime stays busy")
    func staleExecutionIsFailed() throws {
        let timing = Timing()
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        let lastHeartbeat = Fixture.at(minutes(5))
        try execution.recordHeartbeat(at: lastHeartbeat)
        var session = Fixture.session(runtime: Fixture.runningRuntime(since: Fixture.t0))
        session.activeExecutionId = execution.id
        session.executionCount = 1
        let snapshot = SessionSnapshot(session: session, latestExecution: execution, oldestEventAt: nil)
        let staleAt = lastHeartbeat.adding(milliseconds: timing.staleThresholdMs)

        let before = evaluate(snapshot, now: staleAt.adding(milliseconds: -1))
        #expect(before.actions.isEmpty)
        #expect(before.nextWakeUp == staleAt)
        #expect(before.idle == .busy(execution.id))

        let atStale = evaluate(snapshot, now: staleAt)
        #expect(atStale.actions.count == 1)
        let action = try #require(atStale.actions.first)
        guard case .failExecution(let id, let error) = action else {
            Issue.record("expected .failExecution, got \(action)")
            return
        }
        #expect(id == execution.id)
        #expect(error.contains("heartbeat"))
        #expect(atStale.idle == .busy(execution.id))
    }

    @Test("a stalled execution is reported stuck through the session rules")
    func stuckExecutionIsReported() throws {
        let timing = Timing()
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        let now = Fixture.at(seconds(2) + timing.stuckAfterMs)
        try execution.recordHeartbeat(at: now)
        var session = Fixture.session(runtime: Fixture.runningRuntime(since: Fixture.t0))
        session.activeExecutionId = execution.id
        let snapshot = SessionSnapshot(session: session, latestExecution: execution, oldestEventAt: nil)
        let evaluation = evaluate(snapshot, timing: timing, now: now)
        #expect(evaluation.actions == [.reportStuck(execution.id, sinceLastProgressMs: timing.stuckAfterMs)])
        #expect(evaluation.nextWakeUp == now.adding(milliseconds: timing.staleThresholdMs))
    }

    @Test("a never-started session has only its TTL deadline")
    func neverStartedSession() {
        let timing = Timing()
        let session = Fixture.session(runtime: .neverStarted)
        #expect(session.runtime.state == .stopped)
        #expect(session.runtime.startedAt == nil)
        let snapshot = SessionSnapshot(session: session, latestExecution: nil, oldestEventAt: nil)
        let evaluation = evaluate(snapshot, now: Fixture.at(minutes(1)))
        #expect(evaluation.actions.isEmpty)
        #expect(evaluation.idle == .notRunning)
        #expect(evaluation.nextWakeUp == Fixture.at(timing.sessionTTLMs))
    }

    @Test(
        "a session's own idleTimeoutMs overrides the server's default",
        arguments: [(nil, minutes(15)), (minutes(1), minutes(1)), (hours(2), hours(2))] as [(Int64?, Int64)]
    )
    func perSessionIdleTimeout(sessionIdleTimeoutMs: Int64?, expectedTimeoutMs: Int64) throws {
        let timing = Timing(idleTimeoutMs: minutes(15))
        var spec = SessionSpec(prompt: "say hello")
        spec.idleTimeoutMs = sessionIdleTimeoutMs
        let session = Fixture.session(spec: spec, runtime: Fixture.runningRuntime(since: Fixture.t0))
        let snapshot = SessionSnapshot(session: session, latestExecution: nil, oldestEventAt: nil)
        let deadline = Fixture.at(expectedTimeoutMs)

        let before = evaluate(snapshot, timing: timing, now: Fixture.at(seconds(1)))
        #expect(before.nextWakeUp == deadline)
        #expect(before.idle.deadline == deadline)

        let atDeadline = evaluate(snapshot, timing: timing, now: deadline)
        #expect(atDeadline.actions.count == 1)
        let reason = try #require(atDeadline.idle.stopReason)
        #expect(atDeadline.actions == [.stopRuntime(reason)])
        #expect(reason.rule == .idle)
        #expect(reason.idleTimeoutMs == expectedTimeoutMs)
        #expect(reason.idleMs == expectedTimeoutMs)
    }
}
