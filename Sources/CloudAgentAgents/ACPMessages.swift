import CloudAgentProtocol
import Foundation

/// The JSON-RPC 2.0 messages of the Agent Client Protocol, one per line of the agent's stdio.
///
/// The runtime is the client: it sends `initialize`, `session/new`, `session/prompt`… and the
/// `session/cancel` notification; the agent sends `session/update` notifications and requests of
/// its own (`session/request_permission`, and methods of capabilities the client did not offer,
/// which get method-not-found). Nothing the agent writes is trusted: a line that is not a JSON
/// object, or not a JSON-RPC message, is `.invalid` and read as plain output.
public enum ACPMessage: Sendable, Equatable {
    /// A request of the agent's, to answer with `id`.
    case request(id: JSONValue, method: String, params: JSONValue)
    case notification(method: String, params: JSONValue)
    /// The answer to one of the client's requests.
    case response(id: JSONValue, result: Result<JSONValue, ACPError>)
    /// A line that is not a JSON-RPC message (the reason says why).
    case invalid(String)

    /// Reads one line of the agent's stdout.
    public static func parse(_ line: String) -> ACPMessage {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        guard trimmed.hasPrefix("{") else { return .invalid("not a JSON object") }
        guard case .object(let object)? = try? JSONDecoder().decode(JSONValue.self, from: Data(trimmed.utf8)) else {
            return .invalid("malformed JSON")
        }
        let id = object["id"]
        if let method = object["method"]?.stringValue {
            let params = object["params"] ?? .null
            guard let id, id != .null else { return .notification(method: method, params: params) }
            guard Self.isValidId(id) else { return .invalid("a request id must be a number or a string") }
            return .request(id: id, method: method, params: params)
        }
        guard let id, Self.isValidId(id) else { return .invalid("neither a request, a notification nor a response") }
        if let error = object["error"] {
            return .response(id: id, result: .failure(ACPError(error)))
        }
        guard let result = object["result"] else { return .invalid("a response without result or error") }
        return .response(id: id, result: .success(result))
    }

    static func isValidId(_ id: JSONValue) -> Bool {
        switch id {
        case .number, .string: true
        default: false
        }
    }

    // MARK: Writing

    /// The id is an `Int`: an integer literal then picks this writer over the `request` case,
    /// whose id is a `JSONValue` (which integer literals also make).
    public static func request(id: Int, method: String, params: JSONValue) -> String {
        line(["jsonrpc": "2.0", "id": .number(Double(id)), "method": .string(method), "params": params])
    }

    public static func notification(method: String, params: JSONValue) -> String {
        line(["jsonrpc": "2.0", "method": .string(method), "params": params])
    }

    public static func response(id: JSONValue, result: JSONValue) -> String {
        line(["jsonrpc": "2.0", "id": id, "result": result])
    }

    public static func response(id: JSONValue, error: ACPError) -> String {
        var body: [String: JSONValue] = ["code": .number(Double(error.code)), "message": .string(error.message)]
        if let data = error.data { body["data"] = data }
        return line(["jsonrpc": "2.0", "id": id, "error": .object(body)])
    }

    /// One line of compact JSON, keys sorted (no newline inside: JSON escapes them in strings).
    static func line(_ object: [String: JSONValue]) -> String { JSONText.encode(object) }
}

/// A JSON-RPC error: the agent's answer to a request that failed, or the client's to one it
/// does not serve.
public struct ACPError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: Int64
    public var message: String
    public var data: JSONValue?

    public static let parseError: Int64 = -32700
    public static let invalidRequest: Int64 = -32600
    public static let methodNotFound: Int64 = -32601
    public static let invalidParams: Int64 = -32602
    public static let internalError: Int64 = -32603

    public init(code: Int64, message: String, data: JSONValue? = nil) {
        self.code = code
        self.message = message
        self.data = data
    }

    /// From a response's `error` member, whatever shape the agent gave it.
    init(_ value: JSONValue) {
        code = value["code"]?.intValue ?? Self.internalError
        message = value["message"]?.stringValue ?? JSONText.encode(value)
        data = value["data"]
    }

    /// The message with the details agents put in `data` (`{"details": "Session not found: …"}`,
    /// or a string), cut to a readable length.
    public var description: String {
        var text = message
        let details = data?["details"]?.stringValue ?? data?["message"]?.stringValue ?? data?.stringValue
        if let details, !details.isEmpty, details != message { text += ": " + details }
        return AgentEventData.tail(text, limit: 1000)
    }
}
