import Foundation

/// The session's runtime as the control plane knows it: a state machine whose every state
/// carries the data valid in it. stopped → starting → running → stopping → stopped, and a
/// starting or running runtime may also be recorded stopped at once (its launch failed, its
/// process died, its session was deleted). A runtime that never started is `stopped` with no
/// `startedAt` and no reason.
///
/// Every write is a transition (`requestStart`, `markRunning`, `beginStopping`, `markStopped`)
/// or a change of the current state's data (`recordLaunching`, `recordLaunched`,
/// `recordConnection`, `recordAcknowledged`, `moveHost`); one that is valid only in some states
/// throws `IllegalTransition` in the others. The states' own transitions (`Stopped.starting(at:)`,
/// `Starting.running(at:)`, …) cannot fail: code that has matched the state uses them.
///
/// The read-only accessors (`state`, `startedAt`, `process`, …, in `RuntimeStatus+Fields.swift`)
/// answer for whichever state it is in, nil where that state has no such field. Stored as the
/// flat JSON object it always was (`RuntimeStatus+Coding.swift`).
public enum RuntimeStatus: Sendable, Equatable {
    /// Not running: never started, or its last launch stopped (a stop is recorded once).
    ///
    /// Can transition to: `starting` (`requestStart`: a start is requested, cold when the last
    /// launch had connected).
    case stopped(Stopped)
    /// A start was requested: the workspace is being restored, the process launched, and the
    /// runtime has not said hello yet.
    ///
    /// Can transition to: `running` (`markRunning`: its runtime said hello); `stopping`
    /// (`beginStopping`: a stop was decided, say it did not connect in time or its session
    /// changed); `stopped` (`markStopped`: the launch failed, its process died, or its session
    /// was deleted).
    case starting(Starting)
    /// Its runtime said hello (it may have reconnected since).
    ///
    /// Can transition to: `stopping` (`beginStopping`: a stop was decided, say idle or evicted);
    /// `stopped` (`markStopped`: its process died, or its session was deleted).
    case running(Running)
    /// A stop was decided and is being carried out: its processes are being taken down.
    ///
    /// Can transition to: `stopped` (`markStopped`: its processes are gone, or its session was
    /// deleted).
    case stopping(Stopping)

    /// A session whose runtime has never been started.
    public static let neverStarted = RuntimeStatus.stopped(Stopped())

    // MARK: Transitions

    /// stopped → starting, a start requested at `date`.
    public mutating func requestStart(at date: Date) throws(IllegalTransition) {
        guard case .stopped(let stopped) = self else { throw illegal(to: RuntimeState.starting.rawValue) }
        self = .starting(stopped.starting(at: date))
    }

    /// starting → running, when the runtime says hello at `date`.
    public mutating func markRunning(at date: Date) throws(IllegalTransition) {
        guard case .starting(let starting) = self else { throw illegal(to: RuntimeState.running.rawValue) }
        self = .running(starting.running(at: date))
    }

    /// starting | running → stopping: a stop was decided and is being carried out.
    public mutating func beginStopping(_ reason: StopReason) throws(IllegalTransition) {
        switch self {
        case .starting(let starting): self = .stopping(starting.stopping(reason))
        case .running(let running): self = .stopping(running.stopping(reason))
        case .stopping, .stopped: throw illegal(to: RuntimeState.stopping.rawValue)
        }
    }

    /// starting | running | stopping → stopped at `date`, once: a second stop is refused so that
    /// a stop is recorded exactly once. `reason` replaces a stopping runtime's own.
    public mutating func markStopped(at date: Date, reason: StopReason? = nil) throws(IllegalTransition) {
        switch self {
        case .starting(let starting): self = .stopped(starting.stopped(at: date, reason: reason))
        case .running(let running): self = .stopped(running.stopped(at: date, reason: reason))
        case .stopping(let stopping): self = .stopped(stopping.stopped(at: date, reason: reason))
        case .stopped: throw illegal(to: RuntimeState.stopped.rawValue)
        }
    }

    // MARK: Changes of the current state's data

    /// While starting: the launch about to be spawned, recorded before the spawn so that a
    /// runtime connecting at once is known (a launch a crash interrupted is replaced).
    public mutating func recordLaunching(instanceId: String, secretHash: String, hostNode: String?) throws(IllegalTransition) {
        guard case .starting(var starting) = self else { throw illegal(to: "launching") }
        starting.recordLaunching(instanceId: instanceId, secretHash: secretHash, hostNode: hostNode)
        self = .starting(starting)
    }

    /// While starting or running (its runtime may connect before its process is recorded): the
    /// launch's process was spawned at `date`, in `sandbox`.
    public mutating func recordLaunched(_ process: RuntimeProcess, sandbox: String, at date: Date) throws(IllegalTransition) {
        switch self {
        case .starting(var starting):
            starting.recordLaunched(process, sandbox: sandbox, at: date)
            self = .starting(starting)
        case .running(var running):
            running.recordLaunched(process, sandbox: sandbox, at: date)
            self = .running(running)
        case .stopping, .stopped:
            throw illegal(to: "launched")
        }
    }

    /// While running: its runtime (re)connected at `date` to node `node`.
    public mutating func recordConnection(at date: Date, node: String?) throws(IllegalTransition) {
        guard case .running(var running) = self else { throw illegal(to: "connection") }
        running.recordConnection(at: date, node: node)
        self = .running(running)
    }

    /// The launch's events are durably recorded through `seq`. In any state: a stopping
    /// runtime still reports its execution's end, and a frame of the last launch sent before
    /// it heard of its stop is acknowledged like any other.
    public mutating func recordAcknowledged(through seq: Int64) {
        switch self {
        case .stopped(var stopped):
            stopped.recordAcknowledged(through: seq)
            self = .stopped(stopped)
        case .starting(var starting):
            starting.recordAcknowledged(through: seq)
            self = .starting(starting)
        case .running(var running):
            running.recordAcknowledged(through: seq)
            self = .running(running)
        case .stopping(var stopping):
            stopping.recordAcknowledged(through: seq)
            self = .stopping(stopping)
        }
    }

    /// The runtime's host is `node` from now on: a workspace made anew was made on that node's
    /// host, where the next start launches. In any state (normally stopped, or stopping while
    /// another node takes its processes down).
    public mutating func moveHost(to node: String?) {
        switch self {
        case .stopped(var stopped):
            stopped.moveHost(to: node)
            self = .stopped(stopped)
        case .starting(var starting):
            starting.moveHost(to: node)
            self = .starting(starting)
        case .running(var running):
            running.moveHost(to: node)
            self = .running(running)
        case .stopping(var stopping):
            stopping.moveHost(to: node)
            self = .stopping(stopping)
        }
    }

    private func illegal(to target: String) -> IllegalTransition {
        IllegalTransition(from: state.rawValue, to: target)
    }
}

// MARK: The states' data

extension RuntimeStatus {
    /// A stopped runtime: when it stopped and why, and what its last launch recorded, which
    /// outlives it — the API shows when it started and in which sandbox, its host is where the
    /// next start launches, and a late frame of it is acknowledged. Its process and secret are
    /// gone with it. Nothing at all for a runtime that never started.
    public struct Stopped: Sendable, Equatable {
        /// When the last launch's runtime said hello; nil when it never did.
        public let startedAt: Date?
        /// When the last start was requested, and when its process was launched.
        public let requestedAt: Date?
        public let launchedAt: Date?
        /// When the stop was recorded, and why; nil for a runtime that never started.
        public let stoppedAt: Date?
        public let stopReason: StopReason?
        /// The last launch's random id, and whether it was a cold start.
        public let instanceId: String?
        public let cold: Bool?
        /// The highest event `seq` of the last launch that is durably recorded.
        public private(set) var ackedSeq: Int64?
        /// When the last launch's runtime last (re)connected.
        public let connectedAt: Date?
        /// The sandbox the last launch ran in (`bwrap` or `none`).
        public let sandbox: String?
        /// The node whose host the last launch ran on, where the next start launches (several
        /// nodes on one database); nil for a single node.
        public private(set) var hostNode: String?
        /// The node the last launch's runtime last said hello to.
        public let connectedNode: String?

        public init(
            startedAt: Date? = nil, requestedAt: Date? = nil, launchedAt: Date? = nil, stoppedAt: Date? = nil, stopReason: StopReason? = nil,
            instanceId: String? = nil, cold: Bool? = nil, ackedSeq: Int64? = nil, connectedAt: Date? = nil, sandbox: String? = nil,
            hostNode: String? = nil, connectedNode: String? = nil
        ) {
            self.startedAt = startedAt
            self.requestedAt = requestedAt
            self.launchedAt = launchedAt
            self.stoppedAt = stoppedAt
            self.stopReason = stopReason
            self.instanceId = instanceId
            self.cold = cold
            self.ackedSeq = ackedSeq
            self.connectedAt = connectedAt
            self.sandbox = sandbox
            self.hostNode = hostNode
            self.connectedNode = connectedNode
        }

        /// stopped → starting: a start requested at `date`, cold when the last launch had
        /// connected. The sandbox and the nodes stay the last launch's until this one records its own.
        public func starting(at date: Date) -> Starting {
            Starting(requestedAt: date, cold: startedAt != nil, sandbox: sandbox, hostNode: hostNode, connectedNode: connectedNode)
        }

        mutating func recordAcknowledged(through seq: Int64) { ackedSeq = seq }
        mutating func moveHost(to node: String?) { hostNode = node }
    }

    /// A runtime being started: when it was requested and whether it is a cold start, then its
    /// launch as it is recorded — its id and secret before the spawn, its process after it.
    public struct Starting: Sendable, Equatable {
        /// When this start was requested.
        public let requestedAt: Date
        /// Whether this start is a cold start (the session's runtime had run before).
        public let cold: Bool
        /// When this launch's process was launched (after a cold start's restore): the clock of
        /// the pending timeout. Nil while the workspace is being prepared.
        public private(set) var launchedAt: Date?
        /// This launch: a random id, the hash of its secret, and its process.
        public private(set) var instanceId: String?
        public private(set) var secretHash: String?
        public private(set) var process: RuntimeProcess?
        /// The highest event `seq` of this launch that is durably recorded.
        public private(set) var ackedSeq: Int64
        /// The sandbox and the host node of this launch, once recorded (the last launch's until then).
        public private(set) var sandbox: String?
        public private(set) var hostNode: String?
        /// The node the last launch's runtime last said hello to.
        public let connectedNode: String?

        public init(
            requestedAt: Date, cold: Bool, launchedAt: Date? = nil, instanceId: String? = nil, secretHash: String? = nil,
            process: RuntimeProcess? = nil, ackedSeq: Int64 = 0, sandbox: String? = nil, hostNode: String? = nil, connectedNode: String? = nil
        ) {
            self.requestedAt = requestedAt
            self.cold = cold
            self.launchedAt = launchedAt
            self.instanceId = instanceId
            self.secretHash = secretHash
            self.process = process
            self.ackedSeq = ackedSeq
            self.sandbox = sandbox
            self.hostNode = hostNode
            self.connectedNode = connectedNode
        }

        /// starting → running: its runtime said hello at `date`.
        public func running(at date: Date) -> Running {
            Running(
                startedAt: date, requestedAt: requestedAt, cold: cold, launchedAt: launchedAt, instanceId: instanceId, secretHash: secretHash,
                process: process, ackedSeq: ackedSeq, connectedAt: date, sandbox: sandbox, hostNode: hostNode, connectedNode: connectedNode
            )
        }

        /// starting → stopping, for `reason`, before its runtime ever connected.
        public func stopping(_ reason: StopReason) -> Stopping {
            Stopping(
                startedAt: nil, requestedAt: requestedAt, cold: cold, launchedAt: launchedAt, stopReason: reason, instanceId: instanceId,
                secretHash: secretHash, process: process, ackedSeq: ackedSeq, connectedAt: nil, sandbox: sandbox, hostNode: hostNode,
                connectedNode: connectedNode
            )
        }

        /// starting → stopped at `date`, for `reason`, before its runtime ever connected.
        public func stopped(at date: Date, reason: StopReason?) -> Stopped {
            Stopped(
                startedAt: nil, requestedAt: requestedAt, launchedAt: launchedAt, stoppedAt: date, stopReason: reason, instanceId: instanceId,
                cold: cold, ackedSeq: ackedSeq, connectedAt: nil, sandbox: sandbox, hostNode: hostNode, connectedNode: connectedNode
            )
        }

        /// The launch about to be spawned: its id, its secret's hash, and its host node.
        mutating func recordLaunching(instanceId: String, secretHash: String, hostNode: String?) {
            self.instanceId = instanceId
            self.secretHash = secretHash
            self.hostNode = hostNode
        }

        mutating func recordLaunched(_ process: RuntimeProcess, sandbox: String, at date: Date) {
            self.process = process
            self.sandbox = sandbox
            launchedAt = date
        }

        mutating func recordAcknowledged(through seq: Int64) { ackedSeq = seq }
        mutating func moveHost(to node: String?) { hostNode = node }
    }

    /// A running runtime: its start and launch, when it first and last connected, and where.
    public struct Running: Sendable, Equatable {
        /// When its runtime first said hello.
        public let startedAt: Date
        /// When this start was requested, and whether it was a cold start.
        public let requestedAt: Date
        public let cold: Bool
        /// When this launch's process was launched; nil until recorded (a runtime may connect
        /// before its process is recorded).
        public private(set) var launchedAt: Date?
        /// This launch: a random id, the hash of its secret, and its process (nil until recorded).
        public let instanceId: String?
        public let secretHash: String?
        public private(set) var process: RuntimeProcess?
        /// The highest event `seq` of this launch that is durably recorded.
        public private(set) var ackedSeq: Int64
        /// When its runtime last (re)connected.
        public private(set) var connectedAt: Date
        /// The sandbox this launch runs in (`bwrap` or `none`, once its process is recorded).
        public private(set) var sandbox: String?
        /// The node whose host this launch runs on (several nodes on one database); nil for a
        /// single node. Only this node signals its processes.
        public private(set) var hostNode: String?
        /// The node its runtime last said hello to.
        public private(set) var connectedNode: String?

        public init(
            startedAt: Date, requestedAt: Date, cold: Bool, launchedAt: Date? = nil, instanceId: String? = nil, secretHash: String? = nil,
            process: RuntimeProcess? = nil, ackedSeq: Int64 = 0, connectedAt: Date, sandbox: String? = nil, hostNode: String? = nil,
            connectedNode: String? = nil
        ) {
            self.startedAt = startedAt
            self.requestedAt = requestedAt
            self.cold = cold
            self.launchedAt = launchedAt
            self.instanceId = instanceId
            self.secretHash = secretHash
            self.process = process
            self.ackedSeq = ackedSeq
            self.connectedAt = connectedAt
            self.sandbox = sandbox
            self.hostNode = hostNode
            self.connectedNode = connectedNode
        }

        /// running → stopping, for `reason`.
        public func stopping(_ reason: StopReason) -> Stopping {
            Stopping(
                startedAt: startedAt, requestedAt: requestedAt, cold: cold, launchedAt: launchedAt, stopReason: reason, instanceId: instanceId,
                secretHash: secretHash, process: process, ackedSeq: ackedSeq, connectedAt: connectedAt, sandbox: sandbox, hostNode: hostNode,
                connectedNode: connectedNode
            )
        }

        /// running → stopped at `date`, for `reason`.
        public func stopped(at date: Date, reason: StopReason?) -> Stopped {
            Stopped(
                startedAt: startedAt, requestedAt: requestedAt, launchedAt: launchedAt, stoppedAt: date, stopReason: reason,
                instanceId: instanceId, cold: cold, ackedSeq: ackedSeq, connectedAt: connectedAt, sandbox: sandbox, hostNode: hostNode,
                connectedNode: connectedNode
            )
        }

        /// Its runtime (re)connected at `date` to node `node`.
        mutating func recordConnection(at date: Date, node: String?) {
            connectedAt = date
            connectedNode = node
        }

        mutating func recordLaunched(_ process: RuntimeProcess, sandbox: String, at date: Date) {
            self.process = process
            self.sandbox = sandbox
            launchedAt = date
        }

        mutating func recordAcknowledged(through seq: Int64) { ackedSeq = seq }
        mutating func moveHost(to node: String?) { hostNode = node }
    }

    /// A runtime being stopped: why, and its launch as it was when the stop was decided (its
    /// processes are taken down by the node that hosts them).
    public struct Stopping: Sendable, Equatable {
        /// When its runtime first said hello; nil when it was stopped before it connected.
        public let startedAt: Date?
        /// When this start was requested, and whether it was a cold start.
        public let requestedAt: Date
        public let cold: Bool
        /// When this launch's process was launched; nil when it never was.
        public let launchedAt: Date?
        /// Why the stop was decided.
        public let stopReason: StopReason
        /// This launch: a random id, the hash of its secret, and its process (nil when none was
        /// recorded).
        public let instanceId: String?
        public let secretHash: String?
        public let process: RuntimeProcess?
        /// The highest event `seq` of this launch that is durably recorded.
        public private(set) var ackedSeq: Int64
        /// When its runtime last (re)connected; nil when it never did.
        public let connectedAt: Date?
        /// The sandbox this launch runs in, the node whose host it runs on, and the node its
        /// runtime last said hello to.
        public let sandbox: String?
        public private(set) var hostNode: String?
        public let connectedNode: String?

        public init(
            startedAt: Date? = nil, requestedAt: Date, cold: Bool, launchedAt: Date? = nil, stopReason: StopReason, instanceId: String? = nil,
            secretHash: String? = nil, process: RuntimeProcess? = nil, ackedSeq: Int64 = 0, connectedAt: Date? = nil, sandbox: String? = nil,
            hostNode: String? = nil, connectedNode: String? = nil
        ) {
            self.startedAt = startedAt
            self.requestedAt = requestedAt
            self.cold = cold
            self.launchedAt = launchedAt
            self.stopReason = stopReason
            self.instanceId = instanceId
            self.secretHash = secretHash
            self.process = process
            self.ackedSeq = ackedSeq
            self.connectedAt = connectedAt
            self.sandbox = sandbox
            self.hostNode = hostNode
            self.connectedNode = connectedNode
        }

        /// stopping → stopped at `date`: its processes are gone. `reason`, when given, replaces
        /// the one the stop was decided for.
        public func stopped(at date: Date, reason: StopReason? = nil) -> Stopped {
            Stopped(
                startedAt: startedAt, requestedAt: requestedAt, launchedAt: launchedAt, stoppedAt: date, stopReason: reason ?? stopReason,
                instanceId: instanceId, cold: cold, ackedSeq: ackedSeq, connectedAt: connectedAt, sandbox: sandbox, hostNode: hostNode,
                connectedNode: connectedNode
            )
        }

        mutating func recordAcknowledged(through seq: Int64) { ackedSeq = seq }
        mutating func moveHost(to node: String?) { hostNode = node }
    }
}
