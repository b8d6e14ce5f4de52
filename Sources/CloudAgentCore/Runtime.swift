import Foundation

/// Why a runtime was stopped.
public enum StopRule: String, Sendable, Codable, CaseIterable {
    case idle, deleted, evicted, crashed, ttl, `operator`
}

/// The recorded reason for a stop: saved on the session and emitted as `runtime.stopped`.
public struct StopReason: Sendable, Equatable, Codable {
    public var rule: StopRule
    public var at: Date
    public var lastActivityAt: Date?
    public var idleMs: Int64?
    public var idleTimeoutMs: Int64?
    public var detail: String?

    public init(
        rule: StopRule, at: Date, lastActivityAt: Date? = nil, idleMs: Int64? = nil,
        idleTimeoutMs: Int64? = nil, detail: String? = nil
    ) {
        self.rule = rule
        self.at = at
        self.lastActivityAt = lastActivityAt
        self.idleMs = idleMs
        self.idleTimeoutMs = idleTimeoutMs
        self.detail = detail
    }
}

/// A runtime's lifecycle: starting → running → stopping → stopped, and stopped → starting on a
/// cold start. A runtime that never started is `stopped` with no `startedAt` and no reason.
public enum RuntimeState: String, Sendable, Codable, CaseIterable {
    case starting, running, stopping, stopped
}

/// The session's runtime as the control plane knows it.
public struct RuntimeStatus: Sendable, Equatable, Codable {
    public var state: RuntimeState
    /// When the current (or last) runtime connected and became `running`.
    public var startedAt: Date?
    /// When the current start was requested (the `starting` clock).
    public var requestedAt: Date?
    public var stoppedAt: Date?
    public var stopReason: StopReason?

    public init(state: RuntimeState = .stopped, startedAt: Date? = nil, requestedAt: Date? = nil, stoppedAt: Date? = nil, stopReason: StopReason? = nil) {
        self.state = state
        self.startedAt = startedAt
        self.requestedAt = requestedAt
        self.stoppedAt = stoppedAt
        self.stopReason = stopReason
    }

    /// A session whose runtime has never been started.
    public static let neverStarted = RuntimeStatus()

    /// stopped → starting.
    public mutating func requestStart(at date: Date) throws(IllegalTransition) {
        guard state == .stopped else { throw IllegalTransition(from: state.rawValue, to: RuntimeState.starting.rawValue) }
        state = .starting
        requestedAt = date
        startedAt = nil
        stoppedAt = nil
        stopReason = nil
    }

    /// starting → running, when the runtime connects.
    public mutating func markRunning(at date: Date) throws(IllegalTransition) {
        guard state == .starting else { throw IllegalTransition(from: state.rawValue, to: RuntimeState.running.rawValue) }
        state = .running
        startedAt = date
    }

    /// starting | running → stopping: a stop was decided and is being carried out.
    public mutating func beginStopping(_ reason: StopReason) throws(IllegalTransition) {
        guard state == .starting || state == .running else {
            throw IllegalTransition(from: state.rawValue, to: RuntimeState.stopping.rawValue)
        }
        state = .stopping
        stopReason = reason
    }

    /// → stopped, once. A second stop is refused so that a stop is recorded exactly once.
    public mutating func markStopped(at date: Date, reason: StopReason? = nil) throws(IllegalTransition) {
        guard state != .stopped else { throw IllegalTransition(from: state.rawValue, to: RuntimeState.stopped.rawValue) }
        state = .stopped
        stoppedAt = date
        if let reason { stopReason = reason }
    }
}
