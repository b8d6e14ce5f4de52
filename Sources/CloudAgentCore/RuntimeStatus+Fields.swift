import Foundation

/// Read-only views of the runtime's data, whichever state it is in: nil where the current state
/// has no such field. They are what the runtime's stored JSON holds, key by key.
extension RuntimeStatus {
    public var state: RuntimeState {
        switch self {
        case .stopped: .stopped
        case .starting: .starting
        case .running: .running
        case .stopping: .stopping
        }
    }

    /// When the current (or last) runtime said hello and became `running`.
    public var startedAt: Date? {
        switch self {
        case .stopped(let stopped): stopped.startedAt
        case .starting: nil
        case .running(let running): running.startedAt
        case .stopping(let stopping): stopping.startedAt
        }
    }

    /// When the current (or last) start was requested.
    public var requestedAt: Date? {
        switch self {
        case .stopped(let stopped): stopped.requestedAt
        case .starting(let starting): starting.requestedAt
        case .running(let running): running.requestedAt
        case .stopping(let stopping): stopping.requestedAt
        }
    }

    /// When the current (or last) start's process was launched (after a cold start's restore):
    /// the `starting` clock of the pending timeout.
    public var launchedAt: Date? {
        switch self {
        case .stopped(let stopped): stopped.launchedAt
        case .starting(let starting): starting.launchedAt
        case .running(let running): running.launchedAt
        case .stopping(let stopping): stopping.launchedAt
        }
    }

    /// When the last stop was recorded.
    public var stoppedAt: Date? {
        if case .stopped(let stopped) = self { stopped.stoppedAt } else { nil }
    }

    /// Why the runtime is stopping, or why it last stopped.
    public var stopReason: StopReason? {
        switch self {
        case .stopped(let stopped): stopped.stopReason
        case .starting, .running: nil
        case .stopping(let stopping): stopping.stopReason
        }
    }

    /// The current (or last) launch's random id.
    public var instanceId: String? {
        switch self {
        case .stopped(let stopped): stopped.instanceId
        case .starting(let starting): starting.instanceId
        case .running(let running): running.instanceId
        case .stopping(let stopping): stopping.instanceId
        }
    }

    /// The hash of the current launch's secret (none once stopped).
    public var secretHash: String? {
        switch self {
        case .stopped: nil
        case .starting(let starting): starting.secretHash
        case .running(let running): running.secretHash
        case .stopping(let stopping): stopping.secretHash
        }
    }

    /// The current launch's process (none once stopped).
    public var process: RuntimeProcess? {
        switch self {
        case .stopped: nil
        case .starting(let starting): starting.process
        case .running(let running): running.process
        case .stopping(let stopping): stopping.process
        }
    }

    /// Whether the current (or last) launch is a cold start (the session ran before and its
    /// runtime was stopped).
    public var cold: Bool? {
        switch self {
        case .stopped(let stopped): stopped.cold
        case .starting(let starting): starting.cold
        case .running(let running): running.cold
        case .stopping(let stopping): stopping.cold
        }
    }

    /// The highest event `seq` of the current (or last) launch that is durably recorded.
    public var ackedSeq: Int64? {
        switch self {
        case .stopped(let stopped): stopped.ackedSeq
        case .starting(let starting): starting.ackedSeq
        case .running(let running): running.ackedSeq
        case .stopping(let stopping): stopping.ackedSeq
        }
    }

    /// When the current (or last) runtime last (re)connected.
    public var connectedAt: Date? {
        switch self {
        case .stopped(let stopped): stopped.connectedAt
        case .starting: nil
        case .running(let running): running.connectedAt
        case .stopping(let stopping): stopping.connectedAt
        }
    }

    /// The sandbox the current (or last) launch runs in: `bwrap` or `none`.
    public var sandbox: String? {
        switch self {
        case .stopped(let stopped): stopped.sandbox
        case .starting(let starting): starting.sandbox
        case .running(let running): running.sandbox
        case .stopping(let stopping): stopping.sandbox
        }
    }

    /// The node whose host the current (or last) launch runs on (several nodes on one
    /// database); nil for a launch of a single node. Only this node signals its processes.
    public var hostNode: String? {
        switch self {
        case .stopped(let stopped): stopped.hostNode
        case .starting(let starting): starting.hostNode
        case .running(let running): running.hostNode
        case .stopping(let stopping): stopping.hostNode
        }
    }

    /// The node the runtime last said hello to.
    public var connectedNode: String? {
        switch self {
        case .stopped(let stopped): stopped.connectedNode
        case .starting(let starting): starting.connectedNode
        case .running(let running): running.connectedNode
        case .stopping(let stopping): stopping.connectedNode
        }
    }
}
