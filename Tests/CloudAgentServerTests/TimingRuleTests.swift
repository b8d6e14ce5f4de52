import CloudAgentCore
import CloudAgentProtocol
import CloudAgentTestSupport
import Foundation
import Logging
import Testing

@testable import CloudAgentEngine
@testable import CloudAgentServer

/// The two timing rules, end to end through the engine and its durable timers, on a manual
/// clock: a runtime is never stopped while its agent works (heartbeats keep the execution
/// alive), and never left running once it is idle (the stored wake-up fires at the idle
/// deadline). The wake-up scheduler and the heartbeat batcher run as in `serve`; only time is
/// the test's, so a rule of minutes is checked to the millisecond in a few milliseconds.
/// (`RuntimeScenarioTests` runs the same rules with real processes and real time.)
@Suite("Timing rules on a manual clock (the engine with its scheduler, no processes)")
struct TimingRuleTests {
    static let timing = Timing(
        idleTimeoutMs: 60_000, heartbeatIntervalMs: 10_000, staleThresholdMs: 30_000, pendingTimeoutMs: 20_000, stopGraceMs: 100,
        stuckAfterMs: 3_600_000)

    /// The engine harness with its timers running: the wake-up scheduler (as `serve` wires it)
    /// and the heartbeat batcher, both on the harness's manual clock.
    struct Clocked {
        let h: EngineHarness

        /// The scheduler's loop, its refill loop and the batcher each sleep on the clock when
        /// nothing is left to do.
        static let sleepers = 3

        init() throws { h = try EngineHarness(timing: TimingRuleTests.timing) }

        var scheduler: WakeUpScheduler { h.scheduler }
        var heartbeats: HeartbeatBatcher { h.heartbeats }

        /// Runs `body` with the scheduler and the batcher running; stops them afterwards.
        func run(_ body: (Clocked) async throws -> Void) async throws {
            await scheduler.setEvaluator { [rules = h.engine.rules] id, timer in await rules.evaluate(id, timer: timer) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await self.scheduler.run() }
                group.addTask { try await self.heartbeats.run() }
                defer { group.cancelAll() }
                try await quiet()
                try await body(self)
            }
        }

        /// Waits until everything that time has made due was carried out: every timer loop is
        /// asleep again on the clock, no evaluation runs, no background effect is left.
        func quiet() async throws {
            // A deadline for a loaded machine (every test of a parallel run starts at once), not a
            // bound under test: the clock does not move while this waits.
            try await eventually(within: 120, "the scheduler, the batcher and the effects to settle") {
                await h.host.settle()
                let evaluating = await scheduler.evaluatingCount
                return h.clock.sleeperCount == Self.sleepers && evaluating == 0
            }
        }

        /// Moves time on by `milliseconds` and waits until its consequences are carried out.
        func advance(_ milliseconds: Int64) async throws {
            h.clock.advance(milliseconds: milliseconds)
            try await quiet()
        }

        func runtime(_ id: SessionID) async throws -> RuntimeStatus { try #require(try await h.session(id)).runtime }

        func execution(_ id: ExecutionID) async throws -> Execution { try #require(try await h.store.execution(id)) }

        /// The runtime reports that `execution` runs (its agent started).
        func running(_ execution: ExecutionID, on connection: RuntimeConnection) async throws {
            let acked = try await runtime(connection.sessionId).ackedSeq ?? 0
            try await h.engine.gateway.ingest(
                [RuntimeEvent(seq: acked + 1, executionId: execution.rawValue, kind: RuntimeEvent.Kind.running, at: h.clock.now())], from: connection)
            try await quiet()
        }

        /// The runtime reports that `execution` completed.
        func completed(_ execution: ExecutionID, on connection: RuntimeConnection) async throws {
            let acked = try await runtime(connection.sessionId).ackedSeq ?? 0
            try await h.engine.gateway.ingest(
                [
                    RuntimeEvent(
                        seq: acked + 1, executionId: execution.rawValue, kind: RuntimeEvent.Kind.ended, at: h.clock.now(),
                        data: ["status": .string("completed"), "exitCode": .number(0)])
                ], from: connection)
            try await quiet()
        }

        /// A heartbeat of the connection's execution, as the runtime sends one every interval.
        func heartbeat(_ execution: ExecutionID, on connection: RuntimeConnection) async {
            await h.engine.gateway.heartbeat(execution.rawValue, from: connection)
        }
    }

    @Test("an idle runtime is stopped by its stored wake-up exactly at the idle timeout, not a millisecond before, with the reason recorded")
    func idleStopAtTheDeadline() async throws {
        try await Clocked().run { c in
            let (id, connection) = try await c.h.running()
            let execution = try await c.h.sessions.startExecution(id, owner: c.h.owner, message: nil)
            try await c.running(execution.id, on: connection)
            try await c.completed(execution.id, on: connection)
            let endedAt = c.h.clock.now()
            // The next wake-up is stored with the change that made the runtime idle.
            #expect(try await c.h.store.wakeUp(of: id) == endedAt.adding(milliseconds: TimingRuleTests.timing.idleTimeoutMs))

            try await c.advance(TimingRuleTests.timing.idleTimeoutMs - 1)
            #expect(try await c.runtime(id).state == .running, "stopped before the idle deadline")

            try await c.advance(1)
            let runtime = try await c.runtime(id)
            #expect(runtime.state == .stopped)
            let reason = try #require(runtime.stopReason)
            #expect(reason.rule == .idle)
            #expect(reason.idleMs == TimingRuleTests.timing.idleTimeoutMs)
            #expect(reason.idleTimeoutMs == TimingRuleTests.timing.idleTimeoutMs)
            #expect(reason.lastActivityAt == endedAt)
            #expect(reason.at == endedAt.adding(milliseconds: TimingRuleTests.timing.idleTimeoutMs))
            #expect(c.h.host.liveProcesses.isEmpty)
            // What is left to wake the session for is its expiry, far off.
            let next = try #require(try await c.h.store.wakeUp(of: id))
            #expect(next.milliseconds(since: c.h.clock.now()) > 86_400_000, "a stopped runtime's session is not woken again soon: \(next)")
        }
    }

    @Test(
        "a working runtime is never stopped: an execution heartbeating every interval runs through ten idle timeouts; the runtime stops one idle timeout after it ends"
    )
    func workNeverStops() async throws {
        try await Clocked().run { c in
            let timing = TimingRuleTests.timing
            let (id, connection) = try await c.h.running()
            let execution = try await c.h.sessions.startExecution(id, owner: c.h.owner, message: nil)
            try await c.running(execution.id, on: connection)
            let rounds = Int(10 * timing.idleTimeoutMs / timing.heartbeatIntervalMs)
            for _ in 0..<rounds {
                try await c.advance(timing.heartbeatIntervalMs)
                await c.heartbeat(execution.id, on: connection)
                #expect(try await c.runtime(id).state == .running)
            }
            try await c.advance(timing.heartbeatIntervalMs)
            #expect(try await c.execution(execution.id).status == .running)
            #expect(try await c.runtime(id).state == .running)
            #expect(try await c.runtime(id).stopReason == nil)

            try await c.completed(execution.id, on: connection)
            try await c.advance(timing.idleTimeoutMs - 1)
            #expect(try await c.runtime(id).state == .running)
            try await c.advance(1)
            #expect(try await c.runtime(id).stopReason?.rule == .idle)
            #expect(try await c.runtime(id).state == .stopped)
        }
    }

    @Test(
        "an execution whose heartbeats stop fails as stale at the threshold, its runtime told to kill it; the runtime is stopped as idle one timeout after the last heartbeat (an end the control plane declared is no activity)"
    )
    func staleExecutionFailsThenIdleStop() async throws {
        try await Clocked().run { c in
            let timing = TimingRuleTests.timing
            let id = try await c.h.create()
            let (connection, frames) = try await c.h.connect(id)
            let execution = try await c.h.sessions.startExecution(id, owner: c.h.owner, message: nil)
            try await c.running(execution.id, on: connection)
            try await c.advance(timing.heartbeatIntervalMs)
            await c.heartbeat(execution.id, on: connection)
            await c.heartbeats.flush()
            let lastHeartbeat = c.h.clock.now()
            #expect(try await c.execution(execution.id).lastHeartbeat == lastHeartbeat)

            // Silence from here on.
            try await c.advance(timing.staleThresholdMs - 1)
            #expect(try await c.execution(execution.id).status == .running, "failed before the stale threshold")
            try await c.advance(1)
            let failed = try await c.execution(execution.id)
            #expect(failed.status == .failed)
            #expect(failed.error?.contains("stale threshold \(timing.staleThresholdMs) ms") == true, "\(failed.error ?? "no error")")
            #expect(failed.completedAt == lastHeartbeat.adding(milliseconds: timing.staleThresholdMs))
            #expect(try await c.runtime(id).state == .running, "a stale execution fails; its runtime is not stopped for it")
            // The runtime is told to kill the agent of the failed execution.
            connection.close()
            var kills: [String] = []
            for await frame in frames { if case .kill(let executionId, _) = frame { kills.append(executionId) } }
            #expect(kills == [execution.id.rawValue])

            let idleAt = lastHeartbeat.adding(milliseconds: timing.idleTimeoutMs)
            try await c.advance(idleAt.milliseconds(since: c.h.clock.now()) - 1)
            #expect(try await c.runtime(id).state == .running)
            try await c.advance(1)
            let reason = try #require(try await c.runtime(id).stopReason)
            #expect(reason.rule == .idle)
            #expect(reason.lastActivityAt == lastHeartbeat)
            #expect(reason.at == idleAt)
        }
    }

    @Test("a runtime that never connects is stopped as crashed at the pending timeout of its launch, not before")
    func pendingTimeout() async throws {
        try await Clocked().run { c in
            let timing = TimingRuleTests.timing
            let id = try await c.h.create()
            #expect(try await c.runtime(id).state == .starting)
            try await c.advance(timing.pendingTimeoutMs - 1)
            #expect(try await c.runtime(id).state == .starting)
            try await c.advance(1)
            let runtime = try await c.runtime(id)
            #expect(runtime.state == .stopped)
            #expect(runtime.stopReason?.rule == .crashed)
            #expect(runtime.stopReason?.detail?.contains("did not connect within \(timing.pendingTimeoutMs) ms") == true)
            #expect(c.h.host.liveProcesses.isEmpty)
        }
    }

    @Test("the idle wake-up is durable: a new scheduler on the same store (a control plane started again) arms it from the store and fires it on time")
    func wakeUpSurvivesANewScheduler() async throws {
        let h = try EngineHarness(timing: Self.timing)
        let (id, connection) = try await h.running()
        let execution = try await h.sessions.startExecution(id, owner: h.owner, message: nil)
        try await h.complete(execution.id, on: connection)
        let due = try #require(try await h.store.wakeUp(of: id))
        #expect(due == h.clock.now().adding(milliseconds: Self.timing.idleTimeoutMs))

        // No scheduler ran until now: the wake-up exists only in the store.
        let fresh = WakeUpScheduler(store: h.store, clock: h.clock, logger: Logger(label: "engine-test"))
        await fresh.setEvaluator { [rules = h.engine.rules] id, timer in await rules.evaluate(id, timer: timer) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await fresh.run() }
            defer { group.cancelAll() }
            // Its two loops asleep: the refill has read the store. A wake-up beyond the window
            // (10 s ahead) is not held in memory yet.
            await h.clock.waitForSleepers(2)
            #expect(await fresh.armedCount == 0)
            // Within the window, the next refill arms it from the store.
            h.clock.set(to: due.adding(milliseconds: -5_000))
            try await eventually(within: 20, "the refill to arm the stored wake-up") { await fresh.armedCount == 1 }
            #expect(try await h.session(id)?.runtime.state == .running)
            h.clock.set(to: due)
            try await eventually(within: 20, "the armed wake-up to stop the runtime") {
                await h.host.settle()
                return try await h.session(id)?.runtime.state == .stopped
            }
            #expect(try await h.session(id)?.runtime.stopReason?.rule == .idle)
        }
    }
}
