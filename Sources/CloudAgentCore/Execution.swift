import Foundation

/// An execution's lifecycle: pending → running → completed | failed | interrupted.
/// A pending execution may also end directly (never started, interrupted before it ran).
/// A follow-up sent with `queue` while another execution is active starts `queued`: it becomes
/// pending when its turn comes, or ends interrupted (reason `cancelled`) when it is cancelled.
public enum ExecutionStatus: String, Sendable, Codable, CaseIterable {
    case queued, pending, running, completed, failed, interrupted

    /// Pending and running executions are active: their runtime is never idle. A queued one is
    /// not: it waits for its turn and keeps nothing up by itself.
    public var isActive: Bool { self == .pending || self == .running }
}

/// A transition the state machine does not allow (e.g. completing a completed execution).
public struct IllegalTransition: Error, Equatable, CustomStringConvertible {
    public let from: String
    public let to: String
    public var description: String { "illegal transition \(from) → \(to)" }

    public init(from: String, to: String) {
        self.from = from
        self.to = to
    }
}

/// One prompt's run in a session.
public struct Execution: Sendable, Equatable, Codable {
    public var id: ExecutionID
    public var sessionId: SessionID
    public var status: ExecutionStatus
    public var prompt: String
    public var mode: String?
    public var model: String?
    /// When the control plane accepted it (the API's `startedAt`).
    public var startedAt: Date
    public var runningAt: Date?
    public var lastHeartbeat: Date?
    public var completedAt: Date?
    public var exitCode: Int?
    public var error: String?
    public var interruptReason: String?
    /// Agent events recorded so far, and when the latest was.
    public var progressEvents: Int
    public var lastEventAt: Date?
    /// When the one `execution.stuck` warning of the current stall was emitted.
    public var stuckReportedAt: Date?
    /// Whether the runtime itself reported the end. A failure the control plane declared
    /// (no heartbeat, runtime gone) is not evidence that the runtime was active at `completedAt`.
    public var endReportedByRuntime: Bool
    /// When it was queued (a follow-up sent with `queue`); nil for one accepted to run at once.
    /// Its `startedAt` is when its turn came.
    public var queuedAt: Date?
    /// The tokens and cost the agent reported for this execution (cumulative while it runs);
    /// nil when it reported none.
    public var usage: Usage?

    public init(
        id: ExecutionID, sessionId: SessionID, prompt: String, mode: String? = nil, model: String? = nil,
        acceptedAt: Date
    ) {
        self.id = id
        self.sessionId = sessionId
        self.status = .pending
        self.prompt = prompt
        self.mode = mode
        self.model = model
        self.startedAt = acceptedAt
        self.progressEvents = 0
        self.endReportedByRuntime = false
    }

    /// A follow-up that waits for its turn behind the active execution.
    public static func queued(
        id: ExecutionID, sessionId: SessionID, prompt: String, mode: String? = nil, model: String? = nil, at date: Date
    ) -> Execution {
        var execution = Execution(id: id, sessionId: sessionId, prompt: prompt, mode: mode, model: model, acceptedAt: date)
        execution.status = .queued
        execution.queuedAt = date
        return execution
    }

    /// queued → pending: its turn came at `date` (its `startedAt` from now on).
    public mutating func promote(at date: Date) throws(IllegalTransition) {
        guard status == .queued else { throw IllegalTransition(from: status.rawValue, to: ExecutionStatus.pending.rawValue) }
        status = .pending
        startedAt = date
    }

    /// queued → interrupted with reason `cancelled`: it never ran.
    public mutating func cancelQueued(at date: Date) throws(IllegalTransition) {
        guard status == .queued else { throw IllegalTransition(from: status.rawValue, to: "cancelled") }
        status = .interrupted
        completedAt = date
        interruptReason = Execution.cancelledReason
    }

    /// The interrupt reason of a queued execution cancelled before its turn.
    public static let cancelledReason = "cancelled"

    /// pending → running.
    public mutating func markRunning(at date: Date) throws(IllegalTransition) {
        guard status == .pending else { throw IllegalTransition(from: status.rawValue, to: ExecutionStatus.running.rawValue) }
        status = .running
        runningAt = date
    }

    /// A heartbeat from the runtime. Only a running execution heartbeats.
    public mutating func recordHeartbeat(at date: Date) throws(IllegalTransition) {
        guard status == .running else { throw IllegalTransition(from: status.rawValue, to: "heartbeat") }
        lastHeartbeat = max(lastHeartbeat ?? date, date)
    }

    /// An agent event was recorded for this execution.
    public mutating func recordProgress(at date: Date, events count: Int = 1) {
        progressEvents += count
        lastEventAt = max(lastEventAt ?? date, date)
    }

    /// Ends the execution: running (or pending) → completed | failed | interrupted.
    public mutating func end(
        _ outcome: ExecutionStatus, at date: Date, exitCode: Int? = nil, error: String? = nil,
        interruptReason: String? = nil, reportedByRuntime: Bool
    ) throws(IllegalTransition) {
        guard status.isActive, !outcome.isActive else {
            throw IllegalTransition(from: status.rawValue, to: outcome.rawValue)
        }
        guard outcome != .completed || status == .running else {
            throw IllegalTransition(from: status.rawValue, to: outcome.rawValue)
        }
        status = outcome
        completedAt = date
        self.exitCode = exitCode
        self.error = error
        self.interruptReason = interruptReason
        endReportedByRuntime = reportedByRuntime
    }
}
