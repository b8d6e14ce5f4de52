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
    /// When the current start was requested.
    public var requestedAt: Date?
    /// When the current start's process was launched (after a cold start's restore): the
    /// `starting` clock of the pending timeout.
    public var launchedAt: Date?
    public var stoppedAt: Date?
    public var stopReason: StopReason?
    /// This launch of the runtime: a random id, the hash of its secret, and its process.
    public var instanceId: String?
    public var secretHash: String?
    public var process: RuntimeProcess?
    /// Whether this launch is a cold start (the session ran before and its runtime was stopped).
    public var cold: Bool?
    /// The highest event `seq` of this launch that is durably recorded.
    public var ackedSeq: Int64?
    /// When the runtime last (re)connected.
    public var connectedAt: Date?
    /// The sandbox the current (or last) launch runs in: `bwrap` or `none`.
    public var sandbox: String?
    /// The node whose host the current (or last) launch runs on (several nodes on one
    /// database); nil for a launch of a single node. Only this node signals its processes.
    public var hostNode: String?
    /// The node the runtime last said hello to.
    public var connectedNode: String?

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
        cold = startedAt != nil
        state = .starting
        requestedAt = date
        launchedAt = nil
        startedAt = nil
        stoppedAt = nil
        stopReason = nil
        instanceId = nil
        secretHash = nil
        process = nil
        ackedSeq = 0
        connectedAt = nil
    }

    /// starting → running, when the runtime connects.
    public mutating func markRunning(at date: Date) throws(IllegalTransition) {
        guard state == .starting else { throw IllegalTransition(from: state.rawValue, to: RuntimeState.running.rawValue) }
        state = .running
        startedAt = date
        connectedAt = date
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

/// The operating-system process of a runtime launch: its pid (also its process group) and its
/// start time, which tells a live process from a later one that reused the pid. The control
/// plane signals only this process and the processes it can find below it in the process tree
/// (never a pid or group a runtime reports).
public struct RuntimeProcess: Sendable, Equatable, Codable {
    public var pid: Int32
    public var startTime: UInt64

    public init(pid: Int32, startTime: UInt64) {
        self.pid = pid
        self.startTime = startTime
    }
}
