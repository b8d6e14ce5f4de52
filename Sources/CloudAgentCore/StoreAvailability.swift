import Foundation
import Synchronization

/// Whether the store answers, as this process has seen it: the store's downtime is the control
/// plane's downtime, and must never count against a runtime.
///
/// A store that can be away (PostgreSQL) reports each operation's outcome here: `failed()` when
/// the database could not be reached (a connection refused or closed, a server shutting down, no
/// answer in time), `answered()` when an operation went through. `answeringSince` is when it last
/// came back from an outage: the rules judge silence only from then on, as they do from a
/// control plane's start. While it is away, it is now: a decision made then (its context taken
/// before the store came back) treats the moment as a return.
public final class StoreAvailability: Sendable {
    private let clock: any WallClock
    /// Checked on every operation: a lock is taken only to change the state.
    private let down = Atomic<Bool>(false)
    private let state = Mutex<(downSince: Date?, answeringSince: Date?)>((nil, nil))

    public init(clock: any WallClock = SystemWallClock()) {
        self.clock = clock
    }

    /// The store could not be reached.
    public func failed() {
        guard !down.load(ordering: .acquiring) else { return }
        let now = clock.now()
        state.withLock { state in
            if !down.load(ordering: .relaxed) {
                state.downSince = now
                down.store(true, ordering: .releasing)
            }
        }
    }

    /// An operation went through.
    public func answered() {
        guard down.load(ordering: .acquiring) else { return }
        let now = clock.now()
        state.withLock { state in
            if down.load(ordering: .relaxed) {
                state.answeringSince = now
                state.downSince = nil
                down.store(false, ordering: .releasing)
            }
        }
    }

    /// True while the last operation found the store away.
    public var isDown: Bool { down.load(ordering: .acquiring) }

    /// Since when the store has answered without a break: nil when it never was away, now while
    /// it is away.
    public var answeringSince: Date? {
        if isDown { return clock.now() }
        return state.withLock { $0.answeringSince }
    }

    /// When the current outage began (nil while the store answers).
    public var downSince: Date? { state.withLock { $0.downSince } }
}
