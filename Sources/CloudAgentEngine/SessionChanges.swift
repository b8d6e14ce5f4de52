import CloudAgentCore
import Foundation
import Synchronization

/// Wakes whoever waits for a session to reach some state (an execution ended, a runtime
/// stopped): every commit of the session signals its waiters, which check their condition
/// again. Waiting is an event, not a poll of the store; its time limit runs on the injected clock.
public final class SessionChanges: Sendable {
    private struct State {
        var generations: [SessionID: UInt64] = [:]
        var waiters: [SessionID: [Int: CheckedContinuation<Void, Never>]] = [:]
        var nextToken = 0
    }

    private let state = Mutex(State())
    private let clock: any WallClock

    public init(clock: any WallClock = SystemWallClock()) { self.clock = clock }

    /// The session changed: its waiters check their condition again.
    public func changed(_ id: SessionID) {
        let waiting = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.generations[id, default: 0] &+= 1
            return Array((state.waiters.removeValue(forKey: id) ?? [:]).values)
        }
        for continuation in waiting { continuation.resume() }
    }

    /// Waits until `condition` holds, checking it at once and after each change of the session;
    /// false when `limit` passes first.
    public func wait(for id: SessionID, within limit: Duration, until condition: () async -> Bool) async -> Bool {
        let deadline = clock.now().adding(milliseconds: limit.milliseconds)
        while true {
            let generation = state.withLock { $0.generations[id, default: 0] }
            if await condition() { return true }
            if clock.now() >= deadline { return false }
            await waitForChange(of: id, after: generation, at: deadline)
        }
    }

    /// Returns after the session's next change (at once when it changed since `generation`), or
    /// at `deadline`.
    private func waitForChange(of id: SessionID, after generation: UInt64, at deadline: Date) async {
        let token = state.withLock { state -> Int in
            state.nextToken &+= 1
            return state.nextToken
        }
        let timer = Task {
            try? await self.clock.sleep(until: deadline)
            self.expire(id, token)
        }
        defer { timer.cancel() }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let changedAlready = state.withLock { state -> Bool in
                guard state.generations[id, default: 0] == generation else { return true }
                state.waiters[id, default: [:]][token] = continuation
                return false
            }
            if changedAlready { continuation.resume() }
        }
    }

    private func expire(_ id: SessionID, _ token: Int) {
        let continuation = state.withLock { state -> CheckedContinuation<Void, Never>? in
            let removed = state.waiters[id]?.removeValue(forKey: token)
            if state.waiters[id]?.isEmpty == true { state.waiters[id] = nil }
            return removed
        }
        continuation?.resume()
    }

    /// How many waiters there are (for tests).
    public var waiterCount: Int { state.withLock { $0.waiters.values.reduce(0) { $0 + $1.count } } }
}
