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

/// The name of a runtime's state (`RuntimeStatus`), as stored beside the record and shown by the
/// API: starting → running → stopping → stopped, and stopped → starting on a cold start. A
/// runtime that never started is `stopped` with no `startedAt` and no reason.
public enum RuntimeState: String, Sendable, Codable, CaseIterable {
    case starting, running, stopping, stopped
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
