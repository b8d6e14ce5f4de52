import CloudAgentProtocol
import Foundation

/// Cuts an agent's output bytes into lines (on `\n`, dropping a trailing `\r`). A line longer
/// than `maxLineBytes` is cut there, so that one event always fits in a protocol frame.
public struct LineSplitter: Sendable {
    public let maxLineBytes: Int
    private var buffer: [UInt8] = []

    /// 64 KiB: an agent event carries its line twice (normalized and `raw`), escaped, and must
    /// stay under `RuntimeProtocol.maxFrameBytes`.
    public init(maxLineBytes: Int = 64 * 1024) {
        precondition(maxLineBytes > 0)
        self.maxLineBytes = maxLineBytes
    }

    /// The lines completed by `bytes`.
    public mutating func append(_ bytes: some Sequence<UInt8>) -> [String] {
        var lines: [String] = []
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                lines.append(takeLine())
            } else {
                buffer.append(byte)
                if buffer.count >= maxLineBytes { lines.append(takeLine()) }
            }
        }
        return lines
    }

    /// The last, unterminated line, if any.
    public mutating func finish() -> String? {
        buffer.isEmpty ? nil : takeLine()
    }

    private mutating func takeLine() -> String {
        if buffer.last == UInt8(ascii: "\r") { buffer.removeLast() }
        defer { buffer.removeAll(keepingCapacity: true) }
        return String(decoding: buffer, as: UTF8.self)
    }
}

/// Turns one line of an agent's stdout into the data of an `agent` event, when the line is a
/// JSON object; any other line is plain `output`.
///
/// Normalized shapes (fields the agent did not give are left out; `raw` is always the line):
/// - `{"type":"text","text"}` → `{kind: "text", text, raw}`
/// - `{"type":"tool",…}` → `{kind: "tool", name, input, output, exitCode, status, raw}`
/// - `{"type":"error","message"}` → `{kind: "error", message, raw}`
/// - `{"type":"log","message"}` → `{kind: "log", message, raw}`
/// - an object of any other type → `{kind: "log", message: <the line>, raw}`
public enum AgentEventNormalizer {
    public static func agentEventData(fromLine line: String) -> [String: ProtocolValue]? {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        guard trimmed.hasPrefix("{"),
            case .object(let object)? = try? JSONDecoder().decode(ProtocolValue.self, from: Data(trimmed.utf8))
        else { return nil }
        var data: [String: ProtocolValue] = ["raw": .string(line)]
        func copy(_ keys: String...) {
            for key in keys { if let value = object[key] { data[key] = value } }
        }
        switch object["type"]?.stringValue {
        case "text":
            data["kind"] = .string("text")
            data["text"] = object["text"] ?? .string("")
        case "tool":
            data["kind"] = .string("tool")
            copy("name", "input", "output", "exitCode", "status")
        case "error":
            data["kind"] = .string("error")
            data["message"] = object["message"] ?? .string("")
        case "log":
            data["kind"] = .string("log")
            data["message"] = object["message"] ?? .string("")
        default:
            data["kind"] = .string("log")
            data["message"] = .string(line)
        }
        return data
    }
}
