import CloudAgentProtocol
import Foundation

/// Cuts an agent's output bytes into lines (on `\n`, dropping a trailing `\r`). A line longer
/// than `maxLineBytes` is cut there, so that one event always fits in a protocol frame: a
/// `BoundedLineFramer` that cuts.
public struct LineSplitter: Sendable {
    private var framer: BoundedLineFramer

    public var maxLineBytes: Int { framer.maxLineBytes }

    /// 64 KiB: an agent event carries its line twice (normalized and `raw`), escaped, and must
    /// stay under `RuntimeProtocol.maxFrameBytes`.
    public init(maxLineBytes: Int = 64 * 1024) {
        framer = BoundedLineFramer(maxLineBytes: maxLineBytes, overflow: .cut)
    }

    /// The lines completed by `bytes`.
    public mutating func append(_ bytes: some Sequence<UInt8>) -> [String] {
        framer.append(bytes).compactMap { if case .line(let line) = $0 { line } else { nil } }
    }

    /// The last, unterminated line, if any.
    public mutating func finish() -> String? {
        if case .line(let line)? = framer.finish() { line } else { nil }
    }
}

/// Cuts an agent's output into lines (on `\n`, dropping a trailing `\r`), each at most
/// `maxLineBytes`. What becomes of a longer line is the `overflow` policy: `.cut` into pieces of
/// `maxLineBytes` (a headless agent's lines, each an event: `LineSplitter`), or `.drop` whole,
/// reported with its length (an ACP agent's JSON-RPC messages: half a message would be misread).
public struct BoundedLineFramer: Sendable {
    public enum Item: Sendable, Equatable {
        case line(String)
        /// A line of this many bytes was dropped.
        case overlong(Int)
    }

    public enum Overflow: Sendable {
        case cut, drop
    }

    public let maxLineBytes: Int
    public let overflow: Overflow
    private var buffer: [UInt8] = []
    /// Bytes of the line being dropped so far (nil while not dropping).
    private var dropping: Int?

    public init(maxLineBytes: Int, overflow: Overflow = .drop) {
        precondition(maxLineBytes > 0)
        self.maxLineBytes = maxLineBytes
        self.overflow = overflow
    }

    public mutating func append(_ bytes: some Sequence<UInt8>) -> [Item] {
        var items: [Item] = []
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                if let dropped = dropping {
                    items.append(.overlong(dropped))
                    dropping = nil
                } else {
                    items.append(.line(takeLine()))
                }
            } else if let dropped = dropping {
                dropping = dropped + 1
            } else {
                buffer.append(byte)
                switch overflow {
                case .cut where buffer.count >= maxLineBytes:
                    items.append(.line(takeLine()))
                case .drop where buffer.count > maxLineBytes:
                    dropping = buffer.count
                    buffer = []
                default:
                    break
                }
            }
        }
        return items
    }

    /// What is left at the end of the stream.
    public mutating func finish() -> Item? {
        if let dropped = dropping {
            dropping = nil
            return .overlong(dropped)
        }
        return buffer.isEmpty ? nil : .line(takeLine())
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
    public static func agentEventData(fromLine line: String) -> [String: JSONValue]? {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        guard trimmed.hasPrefix("{"),
            case .object(let object)? = try? JSONDecoder().decode(JSONValue.self, from: Data(trimmed.utf8))
        else { return nil }
        var data: [String: JSONValue] = ["raw": .string(line)]
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
