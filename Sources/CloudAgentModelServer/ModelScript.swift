import CloudAgentCore
import Foundation

/// The turns the scripted model server plays, read from a JSON script file (docs/model-server.md).
///
/// Turns are served in order, one per *main* request (a request that offers tools: the agent's
/// own conversation turns); a turn with `times: N` is served N times. Once they are used up, main
/// requests get `defaultText`. Auxiliary requests (no tools: titles, quota probes, small-model
/// calls) never take a turn; they get `auxiliaryText`.
public struct ModelScript: Sendable, Equatable {
    public var turns: [ScriptTurn]
    public var defaultText: String
    public var auxiliaryText: String

    public static let standardDefaultText = "The scripted model has no more turns."
    public static let standardAuxiliaryText = "Scripted reply."

    public init(
        turns: [ScriptTurn] = [],
        defaultText: String = ModelScript.standardDefaultText,
        auxiliaryText: String = ModelScript.standardAuxiliaryText
    ) {
        self.turns = turns
        self.defaultText = defaultText
        self.auxiliaryText = auxiliaryText
    }

    /// Parses a script: either `{"turns": [...], "defaultText"?, "auxiliaryText"?}` or a bare
    /// array of turns.
    public init(json data: Data) throws(ScriptError) {
        let value: JSONValue
        do { value = try JSONDecoder().decode(JSONValue.self, from: data) } catch {
            throw ScriptError("the script is not valid JSON: \(error)")
        }
        switch value {
        case .array(let turns):
            self.init(turns: try Self.turns(turns))
        case .object(let fields):
            for key in fields.keys where !["turns", "defaultText", "auxiliaryText"].contains(key) {
                throw ScriptError("unknown script field '\(key)'")
            }
            guard case .array(let turns)? = fields["turns"] else { throw ScriptError("the script needs a 'turns' array") }
            self.init(
                turns: try Self.turns(turns),
                defaultText: try Self.optionalString(fields["defaultText"], "defaultText") ?? Self.standardDefaultText,
                auxiliaryText: try Self.optionalString(fields["auxiliaryText"], "auxiliaryText") ?? Self.standardAuxiliaryText
            )
        default:
            throw ScriptError("the script must be a JSON object or an array of turns")
        }
    }

    public init(contentsOf url: URL) throws(ScriptError) {
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw ScriptError("cannot read the script \(url.path): \(error.localizedDescription)") }
        try self.init(json: data)
    }

    private static func turns(_ values: [JSONValue]) throws(ScriptError) -> [ScriptTurn] {
        var turns: [ScriptTurn] = []
        for (index, value) in values.enumerated() {
            do { turns.append(try ScriptTurn(json: value)) } catch {
                throw ScriptError("turn \(index): \(error.message)")
            }
        }
        return turns
    }

    fileprivate static func optionalString(_ value: JSONValue?, _ name: String) throws(ScriptError) -> String? {
        switch value {
        case nil, .null?: return nil
        case .string(let string)?: return string
        default: throw ScriptError("'\(name)' must be a string")
        }
    }
}

/// One scripted model turn.
public struct ScriptTurn: Sendable, Equatable {
    public enum Action: Sendable, Equatable {
        /// Only text (`text` holds it).
        case text
        /// A shell command, sent as a call of whichever shell tool the request offers.
        case shell(command: String, description: String?)
        /// A call of the named tool with this input, as given.
        case tool(name: String, input: JSONValue)
        /// An error answer in the API's own error shape.
        case error(ScriptedError)
    }

    public var action: Action
    /// Text said before the tool call (or the whole answer for `.text`).
    public var text: String?
    /// How many main requests this turn answers (retries of an error turn, for instance).
    public var times: Int
    /// Silence before the response starts.
    public var delay: Duration
    /// Silence between streamed chunks (a slow stream); the text is streamed word by word.
    public var chunkDelay: Duration

    public init(_ action: Action, text: String? = nil, times: Int = 1, delay: Duration = .zero, chunkDelay: Duration = .zero) {
        self.action = action
        self.text = text
        self.times = times
        self.delay = delay
        self.chunkDelay = chunkDelay
    }

    public static func text(_ text: String, chunkDelay: Duration = .zero) -> ScriptTurn {
        ScriptTurn(.text, text: text, chunkDelay: chunkDelay)
    }

    public static func shell(_ command: String, description: String? = nil) -> ScriptTurn {
        ScriptTurn(.shell(command: command, description: description))
    }

    public static func error(status: Int, message: String) -> ScriptTurn {
        ScriptTurn(.error(ScriptedError(status: status, message: message)))
    }

    static let fields: Set<String> = ["text", "shell", "description", "tool", "error", "times", "delayMs", "chunkDelayMs"]

    init(json value: JSONValue) throws(ScriptError) {
        guard case .object(let fields) = value else { throw ScriptError("a turn must be a JSON object") }
        for key in fields.keys where !Self.fields.contains(key) { throw ScriptError("unknown turn field '\(key)'") }
        let text = try ModelScript.optionalString(fields["text"], "text")
        let actions = ["shell", "tool", "error"].filter { fields[$0] != nil }
        guard actions.count <= 1 else { throw ScriptError("a turn has at most one of shell, tool, error (found \(actions.joined(separator: ", ")))") }
        let action: Action
        switch actions.first {
        case "shell":
            guard let command = try ModelScript.optionalString(fields["shell"], "shell") else { throw ScriptError("'shell' must be a string") }
            action = .shell(command: command, description: try ModelScript.optionalString(fields["description"], "description"))
        case "tool":
            guard case .object(let tool)? = fields["tool"], case .string(let name)? = tool["name"], !name.isEmpty else {
                throw ScriptError("'tool' must be {\"name\": string, \"input\": object}")
            }
            action = .tool(name: name, input: tool["input"] ?? .object([:]))
        case "error":
            action = .error(try ScriptedError(json: fields["error"] ?? .null))
        default:
            guard text != nil else { throw ScriptError("a turn needs text, shell, tool or error") }
            action = .text
        }
        if case .error = action, text != nil { throw ScriptError("an error turn has no text") }
        self.init(
            action,
            text: text,
            times: try Self.count(fields["times"], "times", minimum: 1) ?? 1,
            delay: .milliseconds(try Self.count(fields["delayMs"], "delayMs", minimum: 0) ?? 0),
            chunkDelay: .milliseconds(try Self.count(fields["chunkDelayMs"], "chunkDelayMs", minimum: 0) ?? 0)
        )
    }

    private static func count(_ value: JSONValue?, _ name: String, minimum: Int) throws(ScriptError) -> Int? {
        guard let value, value != .null else { return nil }
        guard let int = value.intValue, int >= minimum, int <= 86_400_000 else {
            throw ScriptError("'\(name)' must be a whole number ≥ \(minimum)")
        }
        return Int(int)
    }
}

/// An error the script makes the model answer with.
public struct ScriptedError: Sendable, Equatable {
    /// The HTTP status; ignored when `inStream` (the stream starts with 200).
    public var status: Int
    public var message: String
    /// The API's error type (`invalid_request_error`, `overloaded_error`, …); derived from the
    /// status when nil.
    public var type: String?
    /// Fail after the stream has started (Anthropic `error` event, OpenAI `response.failed`).
    public var inStream: Bool
    /// Sent as the `x-should-retry` header, which the Anthropic SDK obeys: false (the default)
    /// makes Claude Code fail at once even on a 5xx instead of backing off and retrying.
    public var retryable: Bool

    public init(status: Int, message: String, type: String? = nil, inStream: Bool = false, retryable: Bool = false) {
        self.status = status
        self.message = message
        self.type = type
        self.inStream = inStream
        self.retryable = retryable
    }

    init(json value: JSONValue) throws(ScriptError) {
        guard case .object(let fields) = value else { throw ScriptError("'error' must be {\"status\": number, \"message\": string}") }
        for key in fields.keys where !["status", "message", "type", "inStream", "retryable"].contains(key) {
            throw ScriptError("unknown error field '\(key)'")
        }
        let status = fields["status"]?.intValue ?? 500
        guard (400...599).contains(status) else { throw ScriptError("'error.status' must be 400…599") }
        self.init(
            status: Int(status),
            message: try ModelScript.optionalString(fields["message"], "error.message") ?? "Scripted model error",
            type: try ModelScript.optionalString(fields["type"], "error.type"),
            inStream: try Self.flag(fields["inStream"], "error.inStream"),
            retryable: try Self.flag(fields["retryable"], "error.retryable")
        )
    }

    private static func flag(_ value: JSONValue?, _ name: String) throws(ScriptError) -> Bool {
        switch value {
        case nil, .null?: return false
        case .bool(let flag)?: return flag
        default: throw ScriptError("'\(name)' must be a boolean")
        }
    }
}

/// A script that cannot be used, with a message naming what is wrong.
public struct ScriptError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
