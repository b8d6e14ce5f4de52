@testable import CloudAgentRuntime
import CloudAgentTestSupport
import Foundation
import Synchronization
import Testing

/// A connection attempt whose upgrade is never answered is given up after the bound, even when
/// it ignores cancellation; one that upgrades in time lives as long as it likes.
@Suite("Bounded connection attempts", .processes)
struct BoundedConnectTests {
    @Test("an attempt stuck before its upgrade (deaf to cancellation) is given up with NoUpgrade after the bound")
    func stuckAttempt() async throws {
        let started = ContinuousClock.now
        await #expect(throws: ControlConnection.NoUpgrade.self) {
            try await ControlConnection.bounded(by: .milliseconds(200)) { _ in
                // Never returns and never notices cancellation, like a connect stuck in NIO.
                await withCheckedContinuation { (_: CheckedContinuation<Void, Never>) in }
            }
        }
        #expect(ContinuousClock.now - started < .seconds(5))
    }

    @Test("an attempt that upgrades in time is not cut off by the bound, and its own error comes through")
    func upgradedAttempt() async throws {
        let started = ContinuousClock.now
        try await ControlConnection.bounded(by: .milliseconds(100)) { upgraded in
            #expect(upgraded())
            try await Task.sleep(for: .milliseconds(400))
        }
        #expect(ContinuousClock.now - started >= .milliseconds(400))
        struct Closed: Error {}
        await #expect(throws: Closed.self) {
            try await ControlConnection.bounded(by: .seconds(5)) { _ in throw Closed() }
        }
    }

    @Test("an attempt that upgrades after it was given up is told to close at once")
    func lateUpgrade() async throws {
        let late = Mutex<Bool?>(nil)
        let answered = Mutex(false)
        await #expect(throws: ControlConnection.NoUpgrade.self) {
            try await ControlConnection.bounded(by: .milliseconds(100)) { upgraded in
                try? await Task.sleep(for: .milliseconds(300))
                let answer = upgraded()
                late.withLock { $0 = answer }
                answered.withLock { $0 = true }
            }
        }
        let deadline = ContinuousClock.now + .seconds(5)
        while !answered.withLock({ $0 }), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(late.withLock { $0 } == false)
    }

    @Test("cancelling the caller cancels the attempt")
    func cancellation() async throws {
        let cancelled = Mutex(false)
        let caller = Task {
            try await ControlConnection.bounded(by: .seconds(30)) { upgraded in
                _ = upgraded()
                do { try await Task.sleep(for: .seconds(30)) } catch { cancelled.withLock { $0 = true }; throw error }
            }
        }
        try await Task.sleep(for: .milliseconds(100))
        caller.cancel()
        _ = await caller.result
        let deadline = ContinuousClock.now + .seconds(5)
        while !cancelled.withLock({ $0 }), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(cancelled.withLock { $0 })
    }
}
