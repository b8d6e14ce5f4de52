import Foundation

extension JSONValue {
    /// A timestamp (`Timestamp.format`), or null for nil.
    public init(_ date: Date?) { self = date.map { .string(Timestamp.format($0)) } ?? .null }
}

/// The event types the control plane writes.
public enum EventType {
    public static let runtimeStarted = "runtime.started"
    public static let runtimeStopped = "runtime.stopped"
    public static let executionStarted = "execution.started"
    public static let executionRunning = "execution.running"
    public static let executionCompleted = "execution.completed"
    public static let executionFailed = "execution.failed"
    public static let executionInterrupted = "execution.interrupted"
    public static let executionStuck = "execution.stuck"
    /// A follow-up queued behind the active execution {prompt, position}.
    public static let executionQueued = "execution.queued"
    /// A queued follow-up cancelled before its turn.
    public static let executionCancelled = "execution.cancelled"
    /// Agent output dropped past the event caps {dropped, reason: events|bytes}, one per execution.
    public static let eventsTruncated = "events.truncated"
    public static let agent = "agent"
    public static let output = "output"
}

/// An event about to be appended; the store gives it the session's next id.
public struct NewEvent: Sendable, Equatable {
    public var executionId: ExecutionID?
    public var type: String
    public var at: Date
    public var data: [String: JSONValue]
    /// `data` as JSON text, when the decision already wrote it (to count its bytes): the store
    /// writes it as it is instead of encoding `data` again. Not part of the event's identity.
    public var encodedData: String?

    public init(executionId: ExecutionID? = nil, type: String, at: Date, data: [String: JSONValue] = [:], encodedData: String? = nil) {
        self.executionId = executionId
        self.type = type
        self.at = at
        self.data = data
        self.encodedData = encodedData
    }

    public static func == (lhs: NewEvent, rhs: NewEvent) -> Bool {
        lhs.executionId == rhs.executionId && lhs.type == rhs.type && lhs.at == rhs.at && lhs.data == rhs.data
    }
}

/// A recorded event. Ids rise by one per session from 1.
public struct Event: Sendable, Equatable {
    public var id: Int64
    public var sessionId: SessionID
    public var executionId: ExecutionID?
    public var type: String
    public var at: Date
    public var data: [String: JSONValue]

    public init(id: Int64, sessionId: SessionID, executionId: ExecutionID?, type: String, at: Date, data: [String: JSONValue]) {
        self.id = id
        self.sessionId = sessionId
        self.executionId = executionId
        self.type = type
        self.at = at
        self.data = data
    }

    public init(id: Int64, sessionId: SessionID, _ new: NewEvent) {
        self.init(id: id, sessionId: sessionId, executionId: new.executionId, type: new.type, at: new.at, data: new.data)
    }

    /// The event as the API shows it.
    public var json: JSONValue {
        [
            "id": .number(Double(id)), "sessionId": .string(sessionId.rawValue),
            "executionId": JSONValue(executionId?.rawValue), "type": .string(type),
            "at": JSONValue(at), "data": .object(data),
        ]
    }
}
