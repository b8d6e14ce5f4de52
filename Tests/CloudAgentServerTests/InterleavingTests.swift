import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentProtocol
import Foundation
import Synchronization
import Testing

@testable import CloudAgentEngine
@testable import CloudAgentServer

/// The concurrency the control plane defines, each case with the interleaving chosen by the
/// test: the session logic on the in-memory store, with a fake runtime host whose slow steps
/// wait at gates and a store hook that holds a session's next transactions. No processes, no
/// sleeps. (`SlowColdStartTests` and `RuntimeScenarioTests` run the same cases with real
/// processes.)
@Suite("Defined concurrency (interleavings on the in-memory store)")
struct InterleavingTests {
    /// Holds the next `count` transactions of session `id` at `gate`.
    static func hold(_ store: InMemorySessionStore, _ id: SessionID, count: Int, at gate: Gate) async {
        let left = Mutex(count)
        await store.setUpdateHook { session in
            guard session == id,
                left.withLock({ left in
                    guard left > 0 else { return false }
                    left -= 1
                    return true
                })
            else { return }
            await gate.pass()
        }
    }

    static func message(_ prompt: String) -> SessionService.MessageInput { SessionService.MessageInput(prompt: prompt) }

    /// A session whose runtime ran one execution and was then stopped by the idle rule.
    static func idleStopped(_ h: EngineHarness) async throws -> SessionID {
        let (id, connection) = try await h.running()
        let execution = try await h.sessions.startExecution(id, owner: h.owner, message: nil)
        try await h.complete(execution.id, on: connection)
        h.clock.advance(milliseconds: h.timing.idleTimeoutMs)
        await h.evaluate(id)
        #expect(try await h.session(id)?.runtime.stopReason?.rule == .idle)
        #expect(try await h.session(id)?.runtime.state == .stopped)
        return id
    }

    @Test("DELETE during a cold start's restore leaves no process and no workspace")
    func deleteDuringRestore() async throws {
        let h = try EngineHarness()
        let id = try await Self.idleStopped(h)
        h.host.restoreGate.close()
        _ = try await h.sessions.startExecution(id, owner: h.owner, message: Self.message("again"))
        await h.host.restoreGate.arrival(1)
        try await h.sessions.delete(id, owner: h.owner)
        #expect(try await h.session(id) == nil)
        // The restore goes on, finds the session gone, and undoes itself.
        h.host.restoreGate.open()
        await h.host.settle()
        #expect(h.host.liveProcesses.isEmpty)
        #expect(!h.host.hasWorkspace(id))
        #expect(h.host.state.withLock { $0.launches } == 1)
    }

    @Test("DELETE while the runtime is being spawned: the spawned process is discarded, the files removed")
    func deleteDuringSpawn() async throws {
        let h = try EngineHarness()
        let id = try await Self.idleStopped(h)
        h.host.launchGate.close()
        _ = try await h.sessions.startExecution(id, owner: h.owner, message: Self.message("again"))
        await h.host.launchGate.arrival(2)
        try await h.sessions.delete(id, owner: h.owner)
        h.host.launchGate.open()
        await h.host.settle()
        #expect(h.host.state.withLock { $0.launches } == 2)
        #expect(h.host.liveProcesses.isEmpty)
        #expect(!h.host.hasWorkspace(id))
    }

    @Test("eviction never stops a runtime whose session accepted an execution after it was picked")
    func evictionRechecksItsVictim() async throws {
        let h = try EngineHarness(maxRuntimes: 1)
        let (a, _) = try await h.running()
        // B's admission picks A; A's eviction transaction waits while A accepts an execution.
        let gate = Gate(open: false)
        await Self.hold(h.memory, a, count: 1, at: gate)
        let creating = Task { try await h.sessions.create(owner: h.owner, input: try SessionInput.parseCreate(["prompt": "b"])) }
        await gate.arrival(1)
        let execution = try await h.sessions.startExecution(a, owner: h.owner, message: nil)
        gate.open()
        await #expect(throws: SessionError.runtimeUnavailable("all 1 runtimes are busy; retry later")) { try await creating.value }
        await h.host.settle()
        let session = try #require(try await h.session(a))
        #expect(session.runtime.state == .running)
        #expect(session.activeExecutionId == execution.id)
        #expect(h.host.liveProcesses == [a])
    }

    @Test("an idle runtime is evicted for a new session, which launches once the victim's processes are gone")
    func evictionOfAnIdleRuntime() async throws {
        let h = try EngineHarness(maxRuntimes: 1)
        let (a, _) = try await h.running()
        h.host.terminateGate.close()
        let b = try await h.sessions.create(owner: h.owner, input: try SessionInput.parseCreate(["prompt": "b"])).id
        let victim = try #require(try await h.session(a))
        #expect(victim.runtime.state == .stopping)
        #expect(victim.runtime.stopReason?.rule == .evicted)
        await h.host.terminateGate.arrival(1)
        // A's processes are still there: B's launch waits for the slot.
        try await eventually(within: 10, "B's launch to wait for a slot") { await h.engine.lifecycle.slots.waitingCount == 1 }
        #expect(try await h.session(b)?.runtime.process == nil)
        #expect(h.host.liveProcesses == [a])
        h.host.terminateGate.open()
        await h.host.settle()
        #expect(try await h.session(a)?.runtime.state == .stopped)
        #expect(try await h.session(b)?.runtime.process != nil)
        #expect(h.host.liveProcesses == [b])
        #expect(h.host.state.withLock { $0.mostLive } == 1)
    }

    @Test("capacity is never exceeded, counting runtimes that are stopping; the API never waits for a stop")
    func capacityCountsStoppingRuntimes() async throws {
        let h = try EngineHarness(maxRuntimes: 2)
        let (a, _) = try await h.running()
        let (b, _) = try await h.running()
        h.host.terminateGate.close()
        // A goes idle: its stop is decided, its processes wait for their grace.
        h.clock.advance(milliseconds: h.timing.idleTimeoutMs)
        _ = await h.engine.rules.evaluate(a)
        #expect(try await h.session(a)?.runtime.state == .stopping)
        // C is admitted against A's slot at once; its launch waits for the slot.
        let c = try await h.sessions.create(owner: h.owner, input: try SessionInput.parseCreate(["prompt": "c"])).id
        // D: every slot is held or promised; B (idle) is evicted for it.
        let d = try await h.sessions.create(owner: h.owner, input: try SessionInput.parseCreate(["prompt": "d"])).id
        #expect(try await h.session(b)?.runtime.stopReason?.rule == .evicted)
        // E: A and B are stopping, C and D hold their places: nothing left to evict.
        await #expect(throws: SessionError.runtimeUnavailable("all 2 runtimes are busy; retry later")) {
            _ = try await h.sessions.create(owner: h.owner, input: try SessionInput.parseCreate(["prompt": "e"]))
        }
        // C's and D's launches wait for slots while A's and B's processes are there.
        try await eventually(within: 10, "C's and D's launches to wait for a slot") { await h.engine.lifecycle.slots.waitingCount == 2 }
        #expect(Set(h.host.liveProcesses) == [a, b])
        #expect(try await h.session(c)?.runtime.process == nil)
        #expect(try await h.session(d)?.runtime.process == nil)
        h.host.terminateGate.open()
        await h.host.settle()
        #expect(Set(h.host.liveProcesses) == [c, d])
        #expect(h.host.state.withLock { $0.mostLive } == 2)
        #expect(await h.engine.lifecycle.slots.heldCount == 2)
    }

    @Test("PATCH racing initiate: whichever comes second is a 409")
    func patchRacingInitiate() async throws {
        let h = try EngineHarness()
        let (id, _) = try await h.running()
        // PATCH first: while its new workspace is being prepared, initiate is refused.
        h.host.prepareGate.close()
        let patching = Task { try await h.sessions.patch(id, owner: h.owner, input: try SessionInput.parsePatch(["setupCommands": ["true"]])) }
        await h.host.prepareGate.arrival(2)
        await #expect(throws: SessionError.invalidState("session \(id) is being changed; retry once the change is done")) {
            _ = try await h.sessions.startExecution(id, owner: h.owner, message: nil)
        }
        h.host.prepareGate.open()
        let patched = try await patching.value
        #expect(patched.spec.setupCommands == ["true"])
        #expect(patched.initiatedAt == nil)
        await h.host.settle()
        // Initiate first: the PATCH is refused and changes nothing.
        _ = try await h.connect(id)
        let execution = try await h.sessions.startExecution(id, owner: h.owner, message: nil)
        await #expect(throws: SessionError.invalidState("session \(id) was initiated: only idleTimeoutMs and budget may change now")) {
            _ = try await h.sessions.patch(id, owner: h.owner, input: try SessionInput.parsePatch(["envVars": ["A": "1"]]))
        }
        let session = try #require(try await h.session(id))
        #expect(session.activeExecutionId == execution.id)
        #expect(session.spec.envVars.isEmpty)
        #expect(session.runtime.state == .running)
    }

    @Test("two concurrent messages: one is accepted, the other is a 409 naming it")
    func concurrentMessages() async throws {
        let h = try EngineHarness()
        let (id, connection) = try await h.running()
        let first = try await h.sessions.startExecution(id, owner: h.owner, message: nil)
        try await h.complete(first.id, on: connection)
        let gate = Gate(open: false)
        await Self.hold(h.memory, id, count: 2, at: gate)
        let one = Task { try await h.sessions.startExecution(id, owner: h.owner, message: Self.message("one")) }
        let two = Task { try await h.sessions.startExecution(id, owner: h.owner, message: Self.message("two")) }
        await gate.arrival(2)
        gate.open()
        let results = [await one.result, await two.result]
        let accepted = results.compactMap { try? $0.get() }
        #expect(accepted.count == 1)
        let refusals = results.compactMap { result -> SessionError? in
            if case .failure(let error) = result { return error as? SessionError }
            return nil
        }
        #expect(refusals == accepted.map { SessionError.executionInProgress($0.id) })
        #expect(try await h.session(id)?.activeExecutionId == accepted.first?.id)
    }

    @Test("cold-start deadlines count from the runtime's launch, not from the restore")
    func coldStartDeadlinesFromLaunch() async throws {
        let h = try EngineHarness()
        let id = try await Self.idleStopped(h)
        h.host.restoreGate.close()
        let execution = try await h.sessions.startExecution(id, owner: h.owner, message: Self.message("again"))
        await h.host.restoreGate.arrival(1)
        // A restore far longer than the pending timeout fails nothing.
        h.clock.advance(milliseconds: h.timing.pendingTimeoutMs * 3)
        #expect(await h.engine.rules.evaluate(id) != nil)
        #expect(try await h.store.execution(execution.id)?.status == .pending)
        #expect(try await h.session(id)?.runtime.state == .starting)
        h.host.restoreGate.open()
        await h.host.settle()
        let launchedAt = try #require(try await h.session(id)?.runtime.launchedAt)
        #expect(launchedAt == h.clock.now())
        // The runtime never connects: crashed exactly at launch + pending timeout.
        h.clock.advance(milliseconds: h.timing.pendingTimeoutMs - 1)
        await h.evaluate(id)
        #expect(try await h.session(id)?.runtime.state == .starting)
        #expect(try await h.store.execution(execution.id)?.status == .pending)
        h.clock.advance(milliseconds: 1)
        await h.evaluate(id)
        #expect(try await h.session(id)?.runtime.stopReason?.rule == .crashed)
        #expect(try await h.store.execution(execution.id)?.status == .failed)
        #expect(h.host.liveProcesses.isEmpty)
    }

    @Test("an auto-commit a crash left pending is redone; the next execution goes to the runtime only after it")
    func pendingAutoCommitIsRedone() async throws {
        let h = try EngineHarness()
        let id = try await h.create(["prompt": "say hi", "autoCommit": true])
        let (connection, frames) = try await h.connect(id)
        let first = try await h.sessions.startExecution(id, owner: h.owner, message: nil)
        // The end was committed, then the control plane died before its auto-commit ran.
        var session = try #require(try await h.session(id))
        var ended = try #require(try await h.store.execution(first.id))
        try ended.markRunning(at: h.clock.now())
        try ended.end(.completed, at: h.clock.now(), exitCode: 0, reportedByRuntime: true)
        session.activeExecutionId = nil
        session.autoCommitPending = first.id
        try await h.store.commit(SessionChange(sessionId: id, session: session, executions: [ended], dropCommands: [.all]))
        let second = try await h.sessions.startExecution(id, owner: h.owner, message: Self.message("next"))
        await h.host.settle()
        #expect(try await h.session(id)?.autoCommitPending == nil)
        let events = try await h.store.events(of: id, EventQuery(limit: 1000))
        let gitEvent = try #require(events.firstIndex { $0.type == "git.nothing_to_commit" && $0.executionId == first.id })
        let secondStarted = try #require(events.firstIndex { $0.type == EventType.executionStarted && $0.executionId == second.id })
        #expect(secondStarted < gitEvent, "the message was accepted before the auto-commit was redone")
        connection.close()
        var executes: [String] = []
        for await frame in frames { if case .execute(let command) = frame { executes.append(command.executionId) } }
        #expect(executes == [first.id.rawValue, second.id.rawValue])
    }

    @Test("the rules go by the session's active execution, not by id order")
    func rulesUseTheActiveExecution() async throws {
        let h = try EngineHarness(timing: Timing(idleTimeoutMs: 1000, pendingTimeoutMs: 5000, stopGraceMs: 100))
        let (id, _) = try await h.running()
        var session = try #require(try await h.session(id))
        let now = h.clock.now()
        // An active execution whose id sorts before a completed one's.
        let active = Execution(id: ExecutionID(at: now.adding(milliseconds: -5000)), sessionId: id, prompt: "active", acceptedAt: now)
        var done = Execution(id: ExecutionID(at: now), sessionId: id, prompt: "done", acceptedAt: now)
        try done.markRunning(at: now)
        try done.end(.completed, at: now, exitCode: 0, reportedByRuntime: true)
        session.activeExecutionId = active.id
        try await h.store.commit(SessionChange(sessionId: id, session: session, newExecution: active, executions: [done]))
        #expect(try await h.store.latestExecution(of: id)?.id == done.id)
        // Past the idle deadline of the completed one: by id order the runtime would be idle.
        h.clock.advance(milliseconds: 2000)
        let next = await h.evaluate(id)
        #expect(try await h.session(id)?.runtime.state == .running)
        #expect(try await h.store.execution(active.id)?.status == .pending)
        // Its next wake-up is the active execution's pending deadline.
        #expect(next == now.adding(milliseconds: 5000))
    }
}
