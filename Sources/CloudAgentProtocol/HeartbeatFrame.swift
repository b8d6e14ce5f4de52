import Foundation

/// The fast path of the most frequent frame: a heartbeat as runtimes write it, a flat object
/// of `type` ("heartbeat"), `executionId`, `at` and `events` in any order, read without
/// `Codable` (a runtime may send thousands a second). Anything else — escapes in a string,
/// other keys, whitespace, a repeated key, `null` — returns nil and goes through
/// `ProtocolCoding`, which gives the same message for every text this accepts.
public enum HeartbeatFrame {
    public static func parse(_ text: String) -> RuntimeMessage? {
        var text = text
        return text.withUTF8 { bytes -> RuntimeMessage? in
            guard bytes.count >= 2, bytes.count <= 512, bytes.first == UInt8(ascii: "{"), bytes.last == UInt8(ascii: "}") else { return nil }
            var type: String?, executionId: String?, at: Double?, events: Int64?
            var index = 1
            while true {
                guard let (key, afterKey) = string(in: bytes, from: index), afterKey < bytes.count, bytes[afterKey] == UInt8(ascii: ":") else { return nil }
                index = afterKey + 1
                switch key {
                case "type", "executionId":
                    guard let (value, after) = string(in: bytes, from: index) else { return nil }
                    if key == "type" {
                        guard type == nil else { return nil }
                        type = value
                    } else {
                        guard executionId == nil else { return nil }
                        executionId = value
                    }
                    index = after
                case "at":
                    guard at == nil, let (range, after) = number(in: bytes, from: index, fraction: true),
                        let value = Double(slice(bytes, range)), value.isFinite
                    else { return nil }
                    at = value
                    index = after
                case "events":
                    guard events == nil, let (range, after) = number(in: bytes, from: index, fraction: false), let value = Int64(slice(bytes, range)) else {
                        return nil
                    }
                    events = value
                    index = after
                default:
                    return nil
                }
                guard index < bytes.count else { return nil }
                if bytes[index] == UInt8(ascii: "}") { break }
                guard bytes[index] == UInt8(ascii: ",") else { return nil }
                index += 1
            }
            guard index == bytes.count - 1, type == "heartbeat", let executionId, !executionId.isEmpty, let at else { return nil }
            return .heartbeat(executionId: executionId, at: Date(timeIntervalSince1970: at / 1000), events: events ?? 0)
        }
    }

    private static func slice(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> String {
        String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }

    /// A string without escapes or control characters, and the index after its closing quote.
    private static func string(in bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> (String, Int)? {
        guard start < bytes.count, bytes[start] == UInt8(ascii: "\"") else { return nil }
        var index = start + 1
        while index < bytes.count, bytes[index] != UInt8(ascii: "\""), bytes[index] != UInt8(ascii: "\\"), bytes[index] >= 0x20 { index += 1 }
        guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { return nil }
        return (slice(bytes, (start + 1)..<index), index + 1)
    }

    /// A JSON number (`-?digits`, then with `fraction` an optional `.digits` and exponent): its
    /// range and the index after it.
    private static func number(in bytes: UnsafeBufferPointer<UInt8>, from start: Int, fraction: Bool) -> (Range<Int>, Int)? {
        var index = start
        func digits() -> Bool {
            let first = index
            while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") { index += 1 }
            return index > first
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
        let integerStart = index
        guard digits() else { return nil }
        // JSON allows no leading zeros ("01"); leave such text to the full decoder.
        if bytes[integerStart] == UInt8(ascii: "0"), index - integerStart > 1 { return nil }
        if fraction {
            if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
                index += 1
                guard digits() else { return nil }
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
                index += 1
                if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
                guard digits() else { return nil }
            }
        }
        guard index - start <= 40 else { return nil }
        return (start..<index, index)
    }
}
