import Foundation

/// A JSON value, for event payloads and for validating request bodies field by field.
public enum JSONValue: Sendable, Equatable, Codable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value):
            if value.rounded() == value, abs(value) < 9.0e15 { try container.encode(Int64(value)) } else { try container.encode(value) }
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    public var stringValue: String? { if case .string(let value) = self { value } else { nil } }
    public var objectValue: [String: JSONValue]? { if case .object(let value) = self { value } else { nil } }
    public var arrayValue: [JSONValue]? { if case .array(let value) = self { value } else { nil } }
    public var intValue: Int64? {
        if case .number(let value) = self, value.rounded() == value, abs(value) < 9.0e15 { Int64(value) } else { nil }
    }
    public var boolValue: Bool? { if case .bool(let value) = self { value } else { nil } }
    public var doubleValue: Double? { if case .number(let value) = self { value } else { nil } }
    public var isNull: Bool { self == .null }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByDictionaryLiteral, ExpressibleByArrayLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .number(Double(value)) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(nilLiteral: ()) { self = .null }
}

extension JSONValue {
    public init(_ date: Date?) { self = date.map { .string(Timestamp.format($0)) } ?? .null }
    public init(_ int: Int64?) { self = int.map { .number(Double($0)) } ?? .null }
    public init(_ string: String?) { self = string.map { .string($0) } ?? .null }
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
    public static let agent = "agent"
    public static let output = "output"
}

/// An event about to be appended; the store gives it the session's next id.
public struct NewEvent: Sendable, Equatable {
    public var executionId: ExecutionID?
    public var type: String
    public var at: Date
    public var data: [String: JSONValue]

    public init(executionId: ExecutionID? = nil, type: String, at: Date, data: [String: JSONValue] = [:]) {
        self.executionId = executionId
        self.type = type
        self.at = at
        self.data = data
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
