import Foundation
import Synchronization

/// A clock that moves only when told: the engine's timing rules run on it in tests, in
/// milliseconds, without waiting. Sleepers resume, in deadline order, when `advance` or `set`
/// reaches their deadline; a cancelled sleeper resumes at once with `CancellationError`.
public final class ManualClock: WallClock {
    private struct Sleeper {
        var deadline: Date
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now: Date
        var sleepers: [UInt64: Sleeper] = [:]
        var next: UInt64 = 0
        /// Waiters for "at least N sleepers": a test's sync point before it moves time.
        var sleeperWaiters: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []
    }

    private let state: Mutex<State>

    public init(_ start: Date = Date(millisecondsSince1970: 1_800_000_000_000)) {
        state = Mutex(State(now: start.truncatedToMilliseconds))
    }

    public func now() -> Date { state.withLock { $0.now } }

    public func sleep(until deadline: Date) async throws {
        let token = state.withLock { state -> UInt64 in
            state.next &+= 1
            return state.next
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let (resumeNow, ready) = state.withLock { state -> (Bool, [CheckedContinuation<Void, Never>]) in
                    if deadline <= state.now { return (true, []) }
                    state.sleepers[token] = Sleeper(deadline: deadline, continuation: continuation)
                    return (false, Self.takeReady(&state))
                }
                for waiter in ready { waiter.resume() }
                if resumeNow {
                    continuation.resume()
                } else if Task.isCancelled {
                    cancel(token)
                }
            }
        } onCancel: {
            cancel(token)
        }
    }

    private func cancel(_ token: UInt64) {
        let sleeper = state.withLock { $0.sleepers.removeValue(forKey: token) }
        sleeper?.continuation.resume(throwing: CancellationError())
    }

    /// Moves time forward by `milliseconds`, waking every sleeper whose deadline is reached.
    public func advance(milliseconds: Int64) {
        set(to: now().adding(milliseconds: milliseconds))
    }

    /// Sets the time (never backwards), waking every sleeper whose deadline is reached.
    public func set(to date: Date) {
        let due = state.withLock { state -> [Sleeper] in
            state.now = max(state.now, date.truncatedToMilliseconds)
            let now = state.now
            let due = state.sleepers.filter { $0.value.deadline <= now }
            for key in due.keys { state.sleepers[key] = nil }
            return due.values.sorted { $0.deadline < $1.deadline }
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    /// How many are sleeping on this clock now.
    public var sleeperCount: Int { state.withLock { $0.sleepers.count } }

    /// The earliest deadline anyone sleeps until.
    public var nextDeadline: Date? { state.withLock { $0.sleepers.values.map(\.deadline).min() } }

    /// Returns once at least `count` are sleeping on this clock (a sync point: the parts under
    /// test have reached their wait before the test moves time).
    public func waitForSleepers(_ count: Int = 1) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { state -> Bool in
                if state.sleepers.count >= count { return true }
                state.sleeperWaiters.append((count, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }

    private static func takeReady(_ state: inout State) -> [CheckedContinuation<Void, Never>] {
        let count = state.sleepers.count
        var ready: [CheckedContinuation<Void, Never>] = []
        state.sleeperWaiters.removeAll { waiter in
            guard waiter.count <= count else { return false }
            ready.append(waiter.continuation)
            return true
        }
        return ready
    }
}
