/// When a runtime that can reach no control plane stops itself (the API contract, "Runtimes on their
/// own"). A pure function of what the runtime saw, by its own monotonic clock, and `now`:
///
///     connected                      → nothing to decide (the control plane's rules apply)
///     now ≥ disconnectedSince + orphanLimit                              → stop (orphanLimit)
///     no active execution, every event acknowledged,
///       now ≥ lastActivity + idleTimeout                                 → stop (idle)
///     lastActivity = max(startedAt, first welcome, last execution start, last execution end)
///     never welcomed: the idle stop waits for startedAt + connectTimeout too
///
/// - `disconnectedSince` is when the last welcomed connection ended, or the runtime's start if no
///   control plane ever welcomed it.
/// - The idle rule mirrors the control plane's (the design's "Idleness of a runtime" (docs/architecture.md)), seen from
///   inside: never idle while an execution is active, and the start is in the max. The control
///   plane measures from the times it recorded — its `runtime.startedAt` is this runtime's first
///   hello, an execution's `completedAt` is when it stored the end — so the runtime counts its
///   first welcome, and an execution's end from when the control plane acknowledged it (the shell
///   moves `lastExecutionEndedAt` then). Its idle deadline is thus never before the control
///   plane's, and a control plane that finds it gone past that deadline can record an idle stop.
/// - A runtime that no control plane has welcomed yet does not stop as idle before
///   `connectTimeout` from its start: the control plane gives a launched runtime that long to
///   connect (its pending timeout), and a node that is slow to answer (loaded, restarting) is not
///   a reason to give up on work that may be on its way.
/// - The idle rule also waits for unacknowledged events: a control plane that comes back within
///   the orphan limit still gets every event. The orphan limit waits for nothing: it bounds how
///   long an unreachable runtime (and its agent) lives, whatever it is doing.
public struct OrphanPolicy: Sendable, Equatable {
    public typealias Instant = ContinuousClock.Instant

    public var idleTimeout: Duration
    public var orphanLimit: Duration
    /// How long the control plane waits for a launched runtime to connect: before its first
    /// welcome, the runtime does not stop as idle sooner than this after its start.
    public var connectTimeout: Duration

    public init(idleTimeout: Duration, orphanLimit: Duration, connectTimeout: Duration = .zero) {
        self.idleTimeout = idleTimeout
        self.orphanLimit = orphanLimit
        self.connectTimeout = connectTimeout
    }

    /// What the runtime knows of itself.
    public struct State: Sendable, Equatable {
        public var startedAt: Instant
        /// Since when no control plane has been connected (welcomed); nil while one is.
        public var disconnectedSince: Instant?
        public var executionActive = false
        /// When a control plane first welcomed this runtime.
        public var firstWelcomedAt: Instant?
        public var lastExecutionStartedAt: Instant?
        /// When the last execution ended, or, later, when the control plane acknowledged its end.
        public var lastExecutionEndedAt: Instant?
        /// Events the control plane has not acknowledged.
        public var unacknowledgedEvents = 0

        /// A runtime that has just started: never connected yet.
        public init(startedAt: Instant) {
            self.startedAt = startedAt
            self.disconnectedSince = startedAt
        }

        /// max(startedAt, first welcome, last execution start, last execution end).
        public var lastActivity: Instant {
            [firstWelcomedAt, lastExecutionStartedAt, lastExecutionEndedAt].compactMap { $0 }.reduce(startedAt, max)
        }
    }

    /// Why the runtime stops itself.
    public enum Stop: Sendable, Equatable {
        /// No control plane, nothing running, nothing to deliver, idle for `idle`.
        case idle(idle: Duration, idleTimeout: Duration)
        /// No control plane for `disconnected`.
        case orphanLimit(disconnected: Duration, orphanLimit: Duration)
    }

    public enum Decision: Sendable, Equatable {
        /// A control plane is connected: its rules decide.
        case connected
        /// Keep running; decide again at `deadline` at the latest (or sooner, when the state
        /// changes: an execution that ends while disconnected brings the idle deadline in).
        case wait(until: Instant)
        case stop(Stop)
    }

    public func evaluate(_ state: State, now: Instant) -> Decision {
        guard let since = state.disconnectedSince else { return .connected }
        let orphanDeadline = since + orphanLimit
        if now >= orphanDeadline { return .stop(.orphanLimit(disconnected: now - since, orphanLimit: orphanLimit)) }
        guard !state.executionActive, state.unacknowledgedEvents == 0 else { return .wait(until: orphanDeadline) }
        let lastActivity = state.lastActivity
        var idleDeadline = lastActivity + idleTimeout
        if state.firstWelcomedAt == nil { idleDeadline = max(idleDeadline, state.startedAt + connectTimeout) }
        if now >= idleDeadline { return .stop(.idle(idle: now - lastActivity, idleTimeout: idleTimeout)) }
        return .wait(until: min(idleDeadline, orphanDeadline))
    }
}

extension Duration {
    /// Whole milliseconds (rounded down), for logs and frames.
    var wholeMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
