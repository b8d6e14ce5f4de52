import CloudAgentCore
import Foundation
import Testing

/// the design's "Idleness of a runtime" (docs/architecture.md): lastActivity = max(runtime.startedAt, activity(latest)),
/// activity(e) = max(lastHeartbeat, completedAt, startedAt), stop at lastActivity + idleTimeout.
@Suite("Idle policy: a runtime is stopped only after idleTimeout without activity")
struct IdlePolicyTests {
    let idle = minutes(15)

    @Test("an execution heartbeating every 30 s for 2 hours is never idle (the seed's bug)")
    func heartbeatingExecutionIsNeverIdle() throws {
        // The runtime started long before: measured from its start alone it would be idle after 15 min.
        let runtime = Fixture.runningRuntime(since: Fixture.t0)
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        let runningAt = try #require(execution.runningAt)
        let interval = seconds(30)
        let beats = hours(2) / interval

        for beat in 1...beats {
            let heartbeat = runningAt.adding(milliseconds: beat * interval)
            try execution.recordHeartbeat(at: heartbeat)
            let justBeforeNext = heartbeat.adding(milliseconds: interval - 1)
            for now in [heartbeat, justBeforeNext] {
                let decision = IdlePolicy.evaluate(runtime: runtime, latest: execution, idleTimeoutMs: idle, now: now)
                #expect(decision == .busy(execution.id), "at \(now.milliseconds(since: runningAt)) ms")
            }
        }
        #expect(execution.lastHeartbeat == runningAt.adding(milliseconds: hours(2)))
    }

    @Test("a pending execution keeps the runtime busy too")
    func pendingExecutionIsBusy() {
        let runtime = Fixture.runningRuntime(since: Fixture.t0)
        let execution = Fixture.execution(acceptedAt: Fixture.at(minutes(1)))
        let decision = IdlePolicy.evaluate(runtime: runtime, latest: execution, idleTimeoutMs: idle, now: Fixture.at(hours(5)))
        #expect(decision == .busy(execution.id))
    }

    @Test("a session prepared but never run is stopped exactly at runtime start + idleTimeout (the seed's revert)")
    func preparedSessionIsReclaimed() throws {
        let start = Fixture.t0
        let runtime = Fixture.runningRuntime(since: start)
        let deadline = start.adding(milliseconds: idle)

        let before = IdlePolicy.evaluate(runtime: runtime, latest: nil, idleTimeoutMs: idle, now: deadline.adding(milliseconds: -1))
        #expect(before == .idleAt(deadline: deadline, lastActivity: Activity(at: start, source: .runtimeStart)))

        let atDeadline = IdlePolicy.evaluate(runtime: runtime, latest: nil, idleTimeoutMs: idle, now: deadline)
        let reason = try #require(atDeadline.stopReason)
        #expect(reason.rule == .idle)
        #expect(reason.at == deadline)
        #expect(reason.lastActivityAt == start)
        #expect(reason.idleMs == idle)
        #expect(reason.idleTimeoutMs == idle)
    }

    @Test("an execution that ends after its last heartbeat is measured from its end, not the heartbeat")
    func completionAfterLastHeartbeat() throws {
        let runtime = Fixture.runningRuntime(since: Fixture.t0)
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        let lastHeartbeat = Fixture.at(minutes(20))
        try execution.recordHeartbeat(at: lastHeartbeat)
        let completedAt = lastHeartbeat.adding(milliseconds: seconds(29))
        try execution.end(.completed, at: completedAt, exitCode: 0, reportedByRuntime: true)

        #expect(IdlePolicy.activity(of: execution) == Activity(at: completedAt, source: .executionEnd))
        let deadline = completedAt.adding(milliseconds: idle)

        let before = IdlePolicy.evaluate(runtime: runtime, latest: execution, idleTimeoutMs: idle, now: deadline.adding(milliseconds: -1))
        #expect(before == .idleAt(deadline: deadline, lastActivity: Activity(at: completedAt, source: .executionEnd)))
        let reason = try #require(IdlePolicy.evaluate(runtime: runtime, latest: execution, idleTimeoutMs: idle, now: deadline).stopReason)
        #expect(reason.lastActivityAt == completedAt)
        #expect(reason.idleMs == idle)

        // The seed's "first present of lastHeartbeat, completedAt, startedAt" would stop it 29 s early.
        let firstPresent = execution.lastHeartbeat ?? execution.completedAt ?? execution.startedAt
        let firstPresentDeadline = firstPresent.adding(milliseconds: idle)
        #expect(deadline.milliseconds(since: firstPresentDeadline) == seconds(29))
        let atFirstPresentDeadline = IdlePolicy.evaluate(runtime: runtime, latest: execution, idleTimeoutMs: idle, now: firstPresentDeadline)
        #expect(atFirstPresentDeadline.stopReason == nil)
        #expect(atFirstPresentDeadline.deadline == deadline)
    }

    @Test("a runtime that is not running yields .notRunning, even long after", arguments: [RuntimeState.stopped, .starting, .stopping])
    func onlyARunningRuntimeCanBeIdle(state: RuntimeState) throws {
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        try execution.end(.completed, at: Fixture.at(minutes(1)), exitCode: 0, reportedByRuntime: true)
        let idleStop = StopReason(rule: .idle, at: Fixture.at(minutes(16)), lastActivityAt: Fixture.at(minutes(1)), idleMs: idle, idleTimeoutMs: idle)
        let runtime: RuntimeStatus =
            switch state {
            case .stopped: .stopped(RuntimeStatus.Stopped(startedAt: Fixture.t0, stoppedAt: Fixture.at(minutes(16)), stopReason: idleStop))
            case .starting: .starting(RuntimeStatus.Starting(requestedAt: Fixture.t0, cold: false))
            case .stopping: .stopping(RuntimeStatus.Stopping(startedAt: Fixture.t0, requestedAt: Fixture.t0, cold: false, stopReason: idleStop))
            case .running: Fixture.runningRuntime(since: Fixture.t0)
            }

        for later in [minutes(16), hours(1), days(1), days(365)] {
            for latest in [execution, nil] {
                let decision = IdlePolicy.evaluate(runtime: runtime, latest: latest, idleTimeoutMs: idle, now: Fixture.at(later))
                #expect(decision == .notRunning)
            }
        }
    }

    @Test("a stop is one-shot: once the runtime stops, the policy asks for nothing more")
    func stopIsRecordedOnce() throws {
        var runtime = Fixture.runningRuntime(since: Fixture.t0)
        let deadline = Fixture.at(idle)
        let reason = try #require(IdlePolicy.evaluate(runtime: runtime, latest: nil, idleTimeoutMs: idle, now: deadline).stopReason)

        try runtime.beginStopping(reason)
        #expect(IdlePolicy.evaluate(runtime: runtime, latest: nil, idleTimeoutMs: idle, now: deadline) == .notRunning)
        try runtime.markStopped(at: deadline.adding(milliseconds: seconds(1)))
        #expect(runtime.stopReason == reason)
        for later in [minutes(1), hours(1), days(30)] {
            #expect(IdlePolicy.evaluate(runtime: runtime, latest: nil, idleTimeoutMs: idle, now: deadline.adding(milliseconds: later)) == .notRunning)
        }
    }

    @Test("a stale execution failed by the control plane is measured from its last heartbeat")
    func staleExecutionIsMeasuredFromLastHeartbeat() throws {
        let timing = Timing()
        let controlPlaneStartedAt = Fixture.t0
        let runtime = Fixture.runningRuntime(since: Fixture.t0)
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        let lastHeartbeat = Fixture.at(minutes(10))
        try execution.recordHeartbeat(at: lastHeartbeat)
        let staleAt = lastHeartbeat.adding(milliseconds: timing.staleThresholdMs)

        let justBefore = ExecutionLiveness.evaluate(
            execution, timing: timing, controlPlaneStartedAt: controlPlaneStartedAt, now: staleAt.adding(milliseconds: -1))
        #expect(justBefore.failure == nil)
        #expect(justBefore.nextDeadline == staleAt)
        let atStale = ExecutionLiveness.evaluate(execution, timing: timing, controlPlaneStartedAt: controlPlaneStartedAt, now: staleAt)
        let failure = try #require(atStale.failure)

        try execution.end(.failed, at: staleAt, error: failure, reportedByRuntime: false)
        // The control plane's declaration is no evidence that the runtime was active at staleAt.
        #expect(IdlePolicy.activity(of: execution) == Activity(at: lastHeartbeat, source: .heartbeat))
        let lastActivity = IdlePolicy.lastActivity(runtimeStartedAt: runtime.startedAt, latest: execution)
        #expect(lastActivity == Activity(at: lastHeartbeat, source: .heartbeat))

        let deadline = lastHeartbeat.adding(milliseconds: idle)
        let afterFailure = IdlePolicy.evaluate(runtime: runtime, latest: execution, idleTimeoutMs: idle, now: staleAt)
        #expect(afterFailure == .idleAt(deadline: deadline, lastActivity: Activity(at: lastHeartbeat, source: .heartbeat)))
        let reason = try #require(IdlePolicy.evaluate(runtime: runtime, latest: execution, idleTimeoutMs: idle, now: deadline).stopReason)
        #expect(reason.lastActivityAt == lastHeartbeat)
        #expect(reason.idleMs == idle)
    }

    @Test("changing the idle timeout moves the deadline at once")
    func idleTimeoutMovesTheDeadline() throws {
        let runtime = Fixture.runningRuntime(since: Fixture.t0)
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        let completedAt = Fixture.at(minutes(20))
        try execution.end(.completed, at: completedAt, exitCode: 0, reportedByRuntime: true)
        let now = completedAt.adding(milliseconds: minutes(10))

        let fifteen = IdlePolicy.evaluate(runtime: runtime, latest: execution, idleTimeoutMs: minutes(15), now: now)
        let thirty = IdlePolicy.evaluate(runtime: runtime, latest: execution, idleTimeoutMs: minutes(30), now: now)
        #expect(fifteen.deadline == completedAt.adding(milliseconds: minutes(15)))
        #expect(thirty.deadline == completedAt.adding(milliseconds: minutes(30)))

        // A timeout shorter than the silence so far stops the runtime now.
        let five = IdlePolicy.evaluate(runtime: runtime, latest: execution, idleTimeoutMs: minutes(5), now: now)
        let reason = try #require(five.stopReason)
        #expect(reason.at == now)
        #expect(reason.lastActivityAt == completedAt)
        #expect(reason.idleMs == minutes(10))
        #expect(reason.idleTimeoutMs == minutes(5))
    }

    @Test("after a cold start the runtime's start is the last activity, not the older execution")
    func coldStartIsMeasuredFromRuntimeStart() throws {
        var runtime = Fixture.runningRuntime(since: Fixture.t0)
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        let completedAt = Fixture.at(hours(1))
        try execution.end(.completed, at: completedAt, exitCode: 0, reportedByRuntime: true)
        let stoppedAt = completedAt.adding(milliseconds: idle)
        let reason = try #require(IdlePolicy.evaluate(runtime: runtime, latest: execution, idleTimeoutMs: idle, now: stoppedAt).stopReason)
        try runtime.beginStopping(reason)
        try runtime.markStopped(at: stoppedAt)

        let restartedAt = Fixture.at(hours(3))
        try runtime.requestStart(at: restartedAt.adding(milliseconds: -seconds(2)))
        try runtime.markRunning(at: restartedAt)

        let expected = Activity(at: restartedAt, source: .runtimeStart)
        #expect(IdlePolicy.lastActivity(runtimeStartedAt: runtime.startedAt, latest: execution) == expected)
        let decision = IdlePolicy.evaluate(runtime: runtime, latest: execution, idleTimeoutMs: idle, now: restartedAt.adding(milliseconds: minutes(1)))
        #expect(decision == .idleAt(deadline: restartedAt.adding(milliseconds: idle), lastActivity: expected))
    }

    @Test("an execution later than the runtime's start wins the max")
    func executionLaterThanRuntimeStartWins() throws {
        let startedAt = Fixture.t0
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        #expect(IdlePolicy.lastActivity(runtimeStartedAt: startedAt, latest: execution) == Activity(at: Fixture.at(seconds(1)), source: .executionStart))
        try execution.recordHeartbeat(at: Fixture.at(seconds(32)))
        #expect(IdlePolicy.lastActivity(runtimeStartedAt: startedAt, latest: execution) == Activity(at: Fixture.at(seconds(32)), source: .heartbeat))
        #expect(IdlePolicy.lastActivity(runtimeStartedAt: nil, latest: execution) == Activity(at: Fixture.at(seconds(32)), source: .heartbeat))
        #expect(IdlePolicy.lastActivity(runtimeStartedAt: startedAt, latest: nil) == Activity(at: startedAt, source: .runtimeStart))
    }
}
