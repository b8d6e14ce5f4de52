import CloudAgentTestSupport
import CloudAgentCore
@testable import CloudAgentEngine
@testable import CloudAgentServer
import Foundation
import Synchronization
import Testing

/// A value shared with tasks.
private final class Shared<Value: Sendable>: Sendable {
    let value: Mutex<Value>
    init(_ value: Value) { self.value = Mutex(value) }
}

/// The wait-for-a-change primitive on its own, on a manual clock: its limits expire only when
/// the test moves time.
@Suite("Session changes: waiting is an event", .timeLimit(.minutes(1)))
struct SessionChangesTests {
    @Test("a waiter wakes on the session's change, at once, and not on another session's")
    func wakesOnItsSessionsChange() async throws {
        let changes = SessionChanges(clock: ManualClock())
        let id = SessionID(), other = SessionID()
        let done = Mutex(false)
        let checks = Mutex(0)
        let waiter = Task {
            await changes.wait(for: id, within: .seconds(10)) {
                checks.withLock { $0 += 1 }
                return done.withLock { $0 }
            }
        }
        try await eventually(within: 5, "the waiter to wait") { changes.waiterCount == 1 }
        changes.changed(other)
        try await Task.sleep(for: .milliseconds(50))
        #expect(checks.withLock { $0 } == 1, "checked again after another session's change")
        done.withLock { $0 = true }
        changes.changed(id)
        // The wait's limit is on a manual clock that never moves: only the change can end it.
        #expect(await waiter.value)
        #expect(checks.withLock { $0 } == 2)
        #expect(changes.waiterCount == 0)
    }

    @Test("without a change the wait ends false at its limit, leaving no waiter behind")
    func timesOut() async throws {
        let clock = ManualClock()
        let changes = SessionChanges(clock: clock)
        let started = clock.now()
        let waiting = Task { await changes.wait(for: SessionID(), within: .milliseconds(200)) { false } }
        await clock.waitForSleepers(1)
        clock.advance(milliseconds: 199)
        try await Task.sleep(for: .milliseconds(20))
        #expect(changes.waiterCount == 1, "gave up before its limit")
        clock.advance(milliseconds: 1)
        let met = await waiting.value
        #expect(!met)
        #expect(clock.now().milliseconds(since: started) >= 200)
        #expect(changes.waiterCount == 0)
    }

    @Test("a change between the check and the wait is not lost")
    func noLostWakeUp() async {
        let changes = SessionChanges(clock: ManualClock())
        let id = SessionID()
        let value = Mutex(0)
        // The condition itself changes the session the first time it is checked: the wait must
        // see that change and check again rather than sleep until its limit.
        // The limit is on a manual clock that never moves: a lost change would hang the wait (and
        // the test's time limit would fail it), never end it false.
        let met = await changes.wait(for: id, within: .seconds(10)) {
            let now = value.withLock {
                $0 += 1; return $0
            }
            if now == 1 { changes.changed(id) }
            return now >= 2
        }
        #expect(met)
    }

    @Test("many waiters and many changes: every waiter whose condition comes true wakes")
    func manyWaiters() async {
        let changes = SessionChanges(clock: ManualClock())
        let id = SessionID()
        let counter = Shared(0)
        await withTaskGroup(of: Bool.self) { group in
            for target in 1...50 {
                group.addTask { await changes.wait(for: id, within: .seconds(10)) { counter.value.withLock { $0 } >= target } }
            }
            group.addTask {
                for _ in 1...50 {
                    counter.value.withLock { $0 += 1 }
                    changes.changed(id)
                    await Task.yield()
                }
                return true
            }
            var all = true
            for await met in group { all = all && met }
            #expect(all)
        }
        #expect(changes.waiterCount == 0)
    }
}
