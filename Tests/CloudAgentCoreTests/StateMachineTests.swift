import CloudAgentCore
import Foundation
import Testing

@Suite("State machines: executions and runtimes")
struct StateMachineTests {
    // MARK: Execution: pending → running → completed | failed | interrupted

    @Test("pending → running → completed records each time")
    func executionHappyPath() throws {
        var execution = Fixture.execution(acceptedAt: Fixture.at(seconds(1)))
        #expect(execution.status == .pending)
        #expect(execution.startedAt == Fixture.at(seconds(1)))

        try execution.markRunning(at: Fixture.at(seconds(2)))
        #expect(execution.status == .running)
        #expect(execution.runningAt == Fixture.at(seconds(2)))

        try execution.recordHeartbeat(at: Fixture.at(seconds(32)))
        // A late, out-of-order heartbeat never moves lastHeartbeat back.
        try execution.recordHeartbeat(at: Fixture.at(seconds(20)))
        #expect(execution.lastHeartbeat == Fixture.at(seconds(32)))

        try execution.end(.completed, at: Fixture.at(seconds(40)), exitCode: 0, reportedByRuntime: true)
        #expect(execution.status == .completed)
        #expect(execution.completedAt == Fixture.at(seconds(40)))
        #expect(execution.exitCode == 0)
        #expect(execution.endReportedByRuntime)
        #expect(!execution.status.isActive)
    }

    @Test("an ended execution refuses every further transition", arguments: [ExecutionStatus.completed, .failed, .interrupted])
    func endedExecutionIsFinal(outcome: ExecutionStatus) throws {
        var execution = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        try execution.end(outcome, at: Fixture.at(seconds(10)), reportedByRuntime: true)
        let ended = execution

        let markRunning = illegalTransition(ended) { try $0.markRunning(at: Fixture.at(seconds(11))) }
        #expect(markRunning?.from == outcome.rawValue)
        #expect(markRunning?.to == "running")
        let heartbeat = illegalTransition(ended) { try $0.recordHeartbeat(at: Fixture.at(seconds(11))) }
        #expect(heartbeat?.from == outcome.rawValue)
        for next in ExecutionStatus.allCases {
            let error = illegalTransition(ended) { try $0.end(next, at: Fixture.at(seconds(11)), reportedByRuntime: true) }
            #expect(error?.from == outcome.rawValue, "\(outcome) → \(next)")
            #expect(error?.to == next.rawValue)
        }
        #expect(ended.completedAt == Fixture.at(seconds(10)))
    }

    @Test("pending → completed is refused: only a running execution completes")
    func pendingCannotComplete() {
        let pending = Fixture.execution(acceptedAt: Fixture.at(seconds(1)))
        let error = illegalTransition(pending) { try $0.end(.completed, at: Fixture.at(seconds(2)), exitCode: 0, reportedByRuntime: true) }
        #expect(error?.from == "pending")
        #expect(error?.to == "completed")
    }

    @Test("a pending execution may fail or be interrupted before it runs", arguments: [ExecutionStatus.failed, .interrupted])
    func pendingMayEnd(outcome: ExecutionStatus) throws {
        var execution = Fixture.execution(acceptedAt: Fixture.at(seconds(1)))
        try execution.end(outcome, at: Fixture.at(minutes(2)), error: "runtime never started the execution", interruptReason: "user", reportedByRuntime: false)
        #expect(execution.status == outcome)
        #expect(execution.runningAt == nil)
        #expect(execution.completedAt == Fixture.at(minutes(2)))
        #expect(!execution.endReportedByRuntime)
    }

    @Test("an execution cannot end into an active status", arguments: [ExecutionStatus.pending, .running])
    func endIntoActiveStatusIsRefused(target: ExecutionStatus) throws {
        let running = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        #expect(illegalTransition(running) { try $0.end(target, at: Fixture.at(seconds(3)), reportedByRuntime: true) } != nil)
    }

    @Test("a pending execution cannot heartbeat, and a running one cannot start again")
    func heartbeatOnlyWhileRunning() throws {
        let pending = Fixture.execution(acceptedAt: Fixture.at(seconds(1)))
        let heartbeat = illegalTransition(pending) { try $0.recordHeartbeat(at: Fixture.at(seconds(2))) }
        #expect(heartbeat?.from == "pending")
        #expect(heartbeat?.to == "heartbeat")

        let running = try Fixture.runningExecution(acceptedAt: Fixture.at(seconds(1)), runningAt: Fixture.at(seconds(2)))
        #expect(illegalTransition(running) { try $0.markRunning(at: Fixture.at(seconds(3))) } != nil)
    }

    // MARK: RuntimeStatus: stopped → starting → running → stopping → stopped

    @Test("stopped → starting → running → stopping → stopped, and a cold start again")
    func runtimeLifecycle() throws {
        var runtime = RuntimeStatus.neverStarted
        #expect(runtime.state == .stopped)
        #expect(runtime.stopReason == nil)

        try runtime.requestStart(at: Fixture.t0)
        #expect(runtime.state == .starting)
        #expect(runtime.requestedAt == Fixture.t0)
        #expect(runtime.startedAt == nil)

        try runtime.markRunning(at: Fixture.at(seconds(2)))
        #expect(runtime.state == .running)
        #expect(runtime.startedAt == Fixture.at(seconds(2)))

        let reason = StopReason(
            rule: .idle, at: Fixture.at(minutes(20)), lastActivityAt: Fixture.at(minutes(5)), idleMs: minutes(15), idleTimeoutMs: minutes(15))
        try runtime.beginStopping(reason)
        #expect(runtime.state == .stopping)
        #expect(runtime.stopReason == reason)

        try runtime.markStopped(at: Fixture.at(minutes(20) + seconds(1)))
        #expect(runtime.state == .stopped)
        #expect(runtime.stoppedAt == Fixture.at(minutes(20) + seconds(1)))
        #expect(runtime.stopReason == reason)

        try runtime.requestStart(at: Fixture.at(hours(1)))
        #expect(runtime.state == .starting)
        #expect(runtime.startedAt == nil)
        #expect(runtime.stoppedAt == nil)
        #expect(runtime.stopReason == nil)
    }

    @Test("a stop is recorded once: stopping a stopped runtime is refused and keeps the first reason")
    func markStoppedTwiceThrows() throws {
        var runtime = Fixture.runningRuntime(since: Fixture.t0)
        let first = StopReason(rule: .idle, at: Fixture.at(minutes(15)))
        try runtime.markStopped(at: Fixture.at(minutes(15)), reason: first)
        let stopped = runtime

        let error = illegalTransition(stopped) {
            try $0.markStopped(at: Fixture.at(minutes(16)), reason: StopReason(rule: .deleted, at: Fixture.at(minutes(16))))
        }
        #expect(error?.from == "stopped")
        #expect(error?.to == "stopped")
        #expect(stopped.stopReason == first)
        #expect(stopped.stoppedAt == Fixture.at(minutes(15)))
        #expect(illegalTransition(stopped) { try $0.beginStopping(first) } != nil)
    }

    @Test("a start is requested only from stopped", arguments: [RuntimeState.starting, .running, .stopping])
    func requestStartOnlyFromStopped(state: RuntimeState) {
        let runtime = Fixture.runtime(state, requestedAt: Fixture.t0, startedAt: Fixture.t0)
        let error = illegalTransition(runtime) { try $0.requestStart(at: Fixture.at(minutes(1))) }
        #expect(error?.from == state.rawValue)
        #expect(error?.to == "starting")
    }

    @Test("a runtime becomes running only from starting", arguments: [RuntimeState.stopped, .running, .stopping])
    func markRunningOnlyFromStarting(state: RuntimeState) {
        let runtime = Fixture.runtime(state, startedAt: Fixture.t0)
        #expect(illegalTransition(runtime) { try $0.markRunning(at: Fixture.at(minutes(1))) } != nil)
    }

    @Test("a starting runtime that never connects can be stopped directly (crashed)")
    func startingRuntimeCanBeStopped() throws {
        var runtime = RuntimeStatus.neverStarted
        try runtime.requestStart(at: Fixture.t0)
        let crashed = StopReason(rule: .crashed, at: Fixture.at(minutes(2)), detail: "runtime did not connect")
        try runtime.markStopped(at: Fixture.at(minutes(2)), reason: crashed)
        #expect(runtime.state == .stopped)
        #expect(runtime.stopReason == crashed)
        #expect(runtime.startedAt == nil)
    }
}
