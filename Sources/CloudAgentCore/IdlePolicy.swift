import Foundation

/// What the latest activity of a runtime was, and where that time came from.
public struct Activity: Sendable, Equatable {
    public enum Source: String, Sendable, Codable {
        case runtimeStart, executionStart, heartbeat, executionEnd
    }

    public var at: Date
    public var source: Source

    public init(at: Date, source: Source) {
        self.at = at
        self.source = source
    }
}

/// The idleness of a runtime (the design's "Idleness of a runtime" (docs/architecture.md)):
///
///     lastActivity = max(runtime.startedAt, activity(latest execution))
///     activity(e)  = max(e.lastHeartbeat, e.completedAt, e.startedAt)
///     idleDeadline = lastActivity + idleTimeout
///
/// - Only a `running` runtime can be idle; any other state yields `.notRunning`, so a stopped
///   runtime is never probed again (the stop is one-shot).
/// - While the latest execution is pending or running the runtime is never idle (the seed's rule).
/// - `runtime.startedAt` is in the max: a session prepared but never run is still reclaimed
///   (the seed's revert).
/// - The latest of the execution's three times, not the first present: an execution that
///   completes after its last heartbeat is measured from its completion.
public enum IdlePolicy {
    public enum Decision: Sendable, Equatable {
        /// The runtime is not running: there is nothing to stop.
        case notRunning
        /// An execution is active: never idle, no deadline.
        case busy(ExecutionID)
        /// Not idle yet; evaluate again at `deadline`.
        case idleAt(deadline: Date, lastActivity: Activity)
        /// Idle: stop the runtime with this reason.
        case stop(StopReason)
    }

    /// activity(e): the latest of the execution's heartbeat, end and start. An end the control
    /// plane declared (no heartbeat, runtime gone) proves nothing about the runtime and is ignored.
    public static func activity(of execution: Execution) -> Activity {
        var latest = Activity(at: execution.startedAt, source: .executionStart)
        if let heartbeat = execution.lastHeartbeat, heartbeat >= latest.at {
            latest = Activity(at: heartbeat, source: .heartbeat)
        }
        if execution.endReportedByRuntime, let completed = execution.completedAt, completed >= latest.at {
            latest = Activity(at: completed, source: .executionEnd)
        }
        return latest
    }

    /// lastActivity = max(runtime.startedAt, activity(latest execution)).
    public static func lastActivity(runtimeStartedAt: Date?, latest: Execution?) -> Activity? {
        let fromRuntime = runtimeStartedAt.map { Activity(at: $0, source: .runtimeStart) }
        let fromExecution = latest.map(activity(of:))
        switch (fromRuntime, fromExecution) {
        case let (runtime?, execution?): return execution.at >= runtime.at ? execution : runtime
        case let (runtime, execution): return runtime ?? execution
        }
    }

    public static func evaluate(runtime: RuntimeStatus, latest: Execution?, idleTimeoutMs: Int64, now: Date) -> Decision {
        guard runtime.state == .running else { return .notRunning }
        if let latest, latest.status.isActive { return .busy(latest.id) }
        guard let last = lastActivity(runtimeStartedAt: runtime.startedAt, latest: latest) else { return .notRunning }
        let deadline = last.at.adding(milliseconds: idleTimeoutMs)
        guard now >= deadline else { return .idleAt(deadline: deadline, lastActivity: last) }
        return .stop(
            StopReason(
                rule: .idle, at: now, lastActivityAt: last.at, idleMs: now.milliseconds(since: last.at),
                idleTimeoutMs: idleTimeoutMs, detail: "no activity for \(now.milliseconds(since: last.at)) ms (since \(last.source.rawValue))"
            ))
    }
}
