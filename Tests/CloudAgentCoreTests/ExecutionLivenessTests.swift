import CloudAgentCore
import Foundation
import Testing

/// the design's "Liveness of an execution" (docs/architecture.md) and "Downtime of the control plane never counts
/// against a runtime".
@Suite("Execution liveness: pending, stale and stuck executions")
struct ExecutionLivenessTests {
    let timing = Timing()

    func evaluate(_ execution: Execution, controlPlaneStartedAt: Date = Fixture.t0, now: Date) -> ExecutionLiveness.Decision {
        ExecutionLiveness.evaluate(execution, timing: timing, controlPlaneStartedAt: controlPlaneStartedAt, now: now)
    }

    /// Heartbeats every interval after `from` up to and including `until`.
    func heartbeat(_ execution: inout Execution, from: Date, until: Date) throws {
        var beat = from.adding(milliseconds: timing.heartbeatIntervalMs)
        while beat <= until {
            try execution.recordHeartbeat(at: beat)
            beat = beat.adding(milliseconds: timing.heartbeatIntervalMs)
        }
    }

    @Test(
        "a pending execution fails at max(accepted, control-plane start) + pendingTimeout",
        arguments: [-hours(1), minutes(5)]
    )
    func pendingTimeout(controlPlaneStartOffset: Int64) throws {
        let acceptedAt = Fixture.at(minutes(1))
        let controlPlaneStartedAt = acceptedAt.adding(milliseconds: controlPlaneStartOffset)
        let execution = Fixture.execution(acceptedAt: acceptedAt)
        let deadline = max(acceptedAt, controlPlaneStartedAt).adding(milliseconds: timing.pendingTimeoutMs)

        let before = evaluate(execution, controlPlaneStartedAt: controlPlaneStartedAt, now: deadline.adding(milliseconds: -1))
        #expect(before.failure == nil)
        #expect(before.stuckForMs == nil)
        #expect(before.nextDeadline == deadline)

        let atDeadline = evaluate(execution, controlPlaneStartedAt: controlPlaneStartedAt, now: deadline)
        let failure = try #require(atDeadline.failure)
        #expect(failure.contains("never started"))
        #expect(atDeadline.nextDeadline == nil)
    }

    @Test("a running execution without any heartbeat fails at runningAt + staleThreshold")
    func runningWithoutHeartbeat() throws {
        let runningAt = Fixture.at(seconds(3))
        let execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: runningAt)
        let staleAt = runningAt.adding(milliseconds: timing.staleThresholdMs)

        let before = evaluate(execution, now: staleAt.adding(milliseconds: -1))
        #expect(before.failure == nil)
        #expect(before.nextDeadline == staleAt)

        let failure = try #require(evaluate(execution, now: staleAt).failure)
        #expect(failure.contains("heartbeat"))
    }

    @Test("a heartbeating execution fails at lastHeartbeat + staleThreshold, not 1 ms before")
    func runningWithHeartbeats() throws {
        let runningAt = Fixture.at(seconds(3))
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: runningAt)
        try heartbeat(&execution, from: runningAt, until: Fixture.at(minutes(5)))
        let lastHeartbeat = try #require(execution.lastHeartbeat)
        let staleAt = lastHeartbeat.adding(milliseconds: timing.staleThresholdMs)

        // Long past runningAt + staleThreshold: heartbeats are what count.
        #expect(evaluate(execution, now: runningAt.adding(milliseconds: timing.staleThresholdMs)).failure == nil)
        let before = evaluate(execution, now: staleAt.adding(milliseconds: -1))
        #expect(before.failure == nil)
        #expect(before.nextDeadline == staleAt)

        let failure = try #require(evaluate(execution, now: staleAt).failure)
        #expect(failure.contains("heartbeat"))
        #expect(failure.contains("90 s"))
    }

    @Test("control-plane downtime never counts: the stale deadline runs from the control plane's start")
    func controlPlaneDowntime() throws {
        let runningAt = Fixture.at(seconds(3))
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: runningAt)
        let lastHeartbeat = Fixture.at(minutes(10))
        try execution.recordHeartbeat(at: lastHeartbeat)
        // The control plane was down for 5 minutes, far longer than the stale threshold.
        let controlPlaneStartedAt = lastHeartbeat.adding(milliseconds: minutes(5))
        let staleAt = controlPlaneStartedAt.adding(milliseconds: timing.staleThresholdMs)

        let afterRestart = evaluate(execution, controlPlaneStartedAt: controlPlaneStartedAt, now: controlPlaneStartedAt.adding(milliseconds: seconds(1)))
        #expect(afterRestart.failure == nil)
        #expect(afterRestart.nextDeadline == staleAt)
        #expect(evaluate(execution, controlPlaneStartedAt: controlPlaneStartedAt, now: staleAt.adding(milliseconds: -1)).failure == nil)

        // The runtime reconnects in time and heartbeats: the work is never failed.
        var reconnected = execution
        let reconnectHeartbeat = controlPlaneStartedAt.adding(milliseconds: seconds(20))
        try reconnected.recordHeartbeat(at: reconnectHeartbeat)
        let atOldDeadline = evaluate(reconnected, controlPlaneStartedAt: controlPlaneStartedAt, now: staleAt)
        #expect(atOldDeadline.failure == nil)
        #expect(atOldDeadline.nextDeadline == reconnectHeartbeat.adding(milliseconds: timing.staleThresholdMs))

        // A runtime that never comes back fails once the threshold has passed since the restart.
        let failure = try #require(evaluate(execution, controlPlaneStartedAt: controlPlaneStartedAt, now: staleAt).failure)
        #expect(failure.contains("heartbeat"))
    }

    @Test("a control-plane restart also restarts the pending clock of an execution accepted before it")
    func pendingAcrossRestart() {
        let acceptedAt = Fixture.at(minutes(1))
        let execution = Fixture.execution(acceptedAt: acceptedAt)
        let controlPlaneStartedAt = acceptedAt.adding(milliseconds: minutes(10))
        let decision = evaluate(execution, controlPlaneStartedAt: controlPlaneStartedAt, now: controlPlaneStartedAt.adding(milliseconds: seconds(1)))
        #expect(decision.failure == nil)
        #expect(decision.nextDeadline == controlPlaneStartedAt.adding(milliseconds: timing.pendingTimeoutMs))
    }

    @Test("a running execution without progress gets one stuck warning per stall, never a failure")
    func stuckWarningOncePerStall() throws {
        let runningAt = Fixture.at(seconds(3))
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: runningAt)
        let progressAt = runningAt.adding(milliseconds: minutes(1))
        execution.recordProgress(at: progressAt)
        let stuckAt = progressAt.adding(milliseconds: timing.stuckAfterMs)

        // Heartbeats keep coming (liveness), but there is no progress.
        try heartbeat(&execution, from: runningAt, until: stuckAt.adding(milliseconds: -1))
        let before = evaluate(execution, now: stuckAt.adding(milliseconds: -1))
        #expect(before.stuckForMs == nil)
        #expect(before.failure == nil)
        #expect(before.nextDeadline == stuckAt)

        let stuck = evaluate(execution, now: stuckAt)
        #expect(stuck.stuckForMs == timing.stuckAfterMs)
        #expect(stuck.failure == nil)
        let lastHeartbeat = try #require(execution.lastHeartbeat)
        #expect(stuck.nextDeadline == lastHeartbeat.adding(milliseconds: timing.staleThresholdMs))

        // The shell records the warning; the same stall never warns again.
        execution.stuckReportedAt = stuckAt
        for later in [seconds(1), minutes(10), minutes(30)] {
            let now = stuckAt.adding(milliseconds: later)
            try heartbeat(&execution, from: execution.lastHeartbeat ?? stuckAt, until: now)
            let decision = evaluate(execution, now: now)
            #expect(decision.stuckForMs == nil, "\(later) ms after the warning")
            #expect(decision.failure == nil)
        }

        // New progress, then a new stall: one new warning.
        let newProgressAt = stuckAt.adding(milliseconds: minutes(35))
        try heartbeat(&execution, from: execution.lastHeartbeat ?? stuckAt, until: newProgressAt)
        execution.recordProgress(at: newProgressAt, events: 3)
        #expect(execution.progressEvents == 4)
        let newStuckAt = newProgressAt.adding(milliseconds: timing.stuckAfterMs)
        try heartbeat(&execution, from: execution.lastHeartbeat ?? newProgressAt, until: newStuckAt)
        #expect(evaluate(execution, now: newStuckAt.adding(milliseconds: -1)).stuckForMs == nil)
        #expect(evaluate(execution, now: newStuckAt).stuckForMs == timing.stuckAfterMs)
    }

    @Test("an execution with no progress at all is stuck counted from runningAt")
    func stuckWithoutAnyProgress() throws {
        let runningAt = Fixture.at(seconds(3))
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: runningAt)
        let stuckAt = runningAt.adding(milliseconds: timing.stuckAfterMs)
        try heartbeat(&execution, from: runningAt, until: stuckAt)
        #expect(evaluate(execution, now: stuckAt.adding(milliseconds: -1)).stuckForMs == nil)
        #expect(evaluate(execution, now: stuckAt).stuckForMs == timing.stuckAfterMs)
    }

    @Test("an ended execution yields nothing, whenever it is evaluated", arguments: [ExecutionStatus.completed, .failed, .interrupted])
    func endedExecutionYieldsNothing(outcome: ExecutionStatus) throws {
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        try execution.end(outcome, at: Fixture.at(seconds(10)), exitCode: outcome == .completed ? 0 : nil, reportedByRuntime: true)
        for later in [minutes(1), hours(1), days(100)] {
            let decision = evaluate(execution, now: Fixture.at(later))
            #expect(decision.failure == nil)
            #expect(decision.stuckForMs == nil)
            #expect(decision.nextDeadline == nil)
        }
    }
}
