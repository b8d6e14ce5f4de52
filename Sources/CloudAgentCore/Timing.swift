/// Every duration the rules use, in milliseconds, so that tests can compress them to
/// milliseconds and production can stretch them to days.
public struct Timing: Sendable, Equatable {
    public var idleTimeoutMs: Int64
    public var heartbeatIntervalMs: Int64
    public var staleThresholdMs: Int64
    public var pendingTimeoutMs: Int64
    public var stopGraceMs: Int64
    public var stuckAfterMs: Int64
    public var sessionTTLMs: Int64
    public var eventRetentionMs: Int64
    /// Handed to each runtime: without a control plane this long, it stops itself.
    public var orphanLimitMs: Int64
    /// An unanswered permission request or question is denied (`timeout`) after this long.
    public var inputTimeoutMs: Int64

    public init(
        idleTimeoutMs: Int64 = 15 * 60_000,
        heartbeatIntervalMs: Int64 = 30_000,
        staleThresholdMs: Int64 = 90_000,
        pendingTimeoutMs: Int64 = 2 * 60_000,
        stopGraceMs: Int64 = 10_000,
        stuckAfterMs: Int64 = 10 * 60_000,
        sessionTTLMs: Int64 = 90 * 86_400_000,
        eventRetentionMs: Int64 = 90 * 86_400_000,
        orphanLimitMs: Int64 = 60 * 60_000,
        inputTimeoutMs: Int64 = 30 * 60_000
    ) {
        self.idleTimeoutMs = idleTimeoutMs
        self.heartbeatIntervalMs = heartbeatIntervalMs
        self.staleThresholdMs = staleThresholdMs
        self.pendingTimeoutMs = pendingTimeoutMs
        self.stopGraceMs = stopGraceMs
        self.stuckAfterMs = stuckAfterMs
        self.sessionTTLMs = sessionTTLMs
        self.eventRetentionMs = eventRetentionMs
        self.orphanLimitMs = orphanLimitMs
        self.inputTimeoutMs = inputTimeoutMs
    }
}
