import CloudAgentCore
import Synchronization

/// Wakes one sleeping loop early. A signal that comes while nothing waits is kept for the next wait.
package final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var waiter: (id: UInt64, continuation: CheckedContinuation<Void, Never>)?
        var lastWaiterId: UInt64 = 0
    }

    private let state = Mutex(State())

    package func signal() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter else {
                state.pending = true
                return nil
            }
            state.waiter = nil
            return waiter.continuation
        }
        waiter?.resume()
    }

    /// Returns at the next signal (at once for a kept one), after `milliseconds` on `clock`, or
    /// when cancelled.
    package func wait(upToMilliseconds milliseconds: Int64, on clock: any WallClock) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await clock.sleep(milliseconds: milliseconds) }
            group.addTask { await self.next() }
            _ = await group.next()
            group.cancelAll()
        }
    }

    private func next() async {
        let id = state.withLock { state in
            state.lastWaiterId += 1
            return state.lastWaiterId
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.pending {
                        state.pending = false
                        return true
                    }
                    // Cancelled before the waiter was registered: the handler found nothing to resume.
                    if Task.isCancelled { return true }
                    state.waiter = (id, continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                guard let waiter = state.waiter, waiter.id == id else { return nil }
                state.waiter = nil
                return waiter.continuation
            }
            waiter?.resume()
        }
    }
}
