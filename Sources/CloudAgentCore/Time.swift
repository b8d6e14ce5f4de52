import Foundation

/// The source of "now" for everything that decides on time, and of every wait on time. Policies
/// never read a clock themselves: the shell asks this and passes the value in. Every part that
/// waits (the wake-up scheduler, the heartbeat batcher, the callback dispatcher, a waiter on a
/// session's change) sleeps on its clock, so a test moves time by hand (`ManualClock`).
public protocol WallClock: Sendable {
    func now() -> Date
    /// Suspends until `deadline` on this clock; throws `CancellationError` when cancelled first.
    func sleep(until deadline: Date) async throws
}

extension WallClock {
    /// The real wait: until `deadline`, measured from `now()`.
    public func sleep(until deadline: Date) async throws {
        let ms = deadline.milliseconds(since: now())
        if ms > 0 { try await Task.sleep(for: .milliseconds(ms)) } else { try Task.checkCancellation() }
    }

    /// Suspends for `milliseconds` on this clock.
    public func sleep(milliseconds: Int64) async throws {
        try await sleep(until: now().adding(milliseconds: milliseconds))
    }
}

/// The real clock, truncated to milliseconds (the precision of every stored timestamp).
public struct SystemWallClock: WallClock {
    public init() {}
    public func now() -> Date { Date().truncatedToMilliseconds }
}

extension Date {
    /// Milliseconds since 1970, the stored form of every timestamp.
    public var millisecondsSince1970: Int64 {
        // Whole milliseconds, rounding down; the microsecond of slack keeps a Date made from
        // whole milliseconds (which can sit a hair below them in binary) on its millisecond.
        Int64((timeIntervalSince1970 * 1000 + 0.001).rounded(.down))
    }

    public init(millisecondsSince1970 millis: Int64) {
        self.init(timeIntervalSince1970: Double(millis) / 1000)
    }

    public var truncatedToMilliseconds: Date { Date(millisecondsSince1970: millisecondsSince1970) }

    public func adding(milliseconds: Int64) -> Date {
        Date(millisecondsSince1970: millisecondsSince1970 + milliseconds)
    }

    /// Whole milliseconds from `earlier` to `self` (negative when `earlier` is later).
    public func milliseconds(since earlier: Date) -> Int64 {
        millisecondsSince1970 - earlier.millisecondsSince1970
    }
}

/// RFC 3339 timestamps in UTC with milliseconds, as the API writes them.
public enum Timestamp {
    public static func format(_ date: Date) -> String {
        // The formatter truncates fractions (…05.678 can print as .677), so the milliseconds
        // are written from the stored value itself.
        let millis = date.millisecondsSince1970
        let (seconds, fraction) = millis.quotientAndRemainder(dividingBy: 1000)
        let whole = fraction < 0 ? seconds - 1 : seconds
        let base = Date(timeIntervalSince1970: Double(whole)).formatted(Date.ISO8601FormatStyle(timeZone: .gmt))
        return String(base.dropLast()) + String(format: ".%03lldZ", (fraction + 1000) % 1000)
    }

    public static func parse(_ text: String) -> Date? {
        if let date = try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(text) { return date }
        return try? Date.ISO8601FormatStyle().parse(text)
    }
}

/// Durations written `250ms`, `30s`, `15m`, `2h`, `90d`, held as milliseconds.
public enum DurationText {
    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public let text: String
        public var description: String {
            "invalid duration \"\(text)\": expected a positive whole number followed by ms, s, m, h or d (e.g. 250ms, 30s, 15m, 2h, 90d)"
        }
    }

    static let units: [(suffix: String, millis: Int64)] = [
        ("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000),
    ]

    /// Parses a duration into milliseconds. Zero and negative durations are refused.
    public static func milliseconds(_ text: String) throws(ParseError) -> Int64 {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        // "ms" must be tried before "s" and "m".
        for unit in units.sorted(by: { $0.suffix.count > $1.suffix.count }) where trimmed.hasSuffix(unit.suffix) {
            let number = trimmed.dropLast(unit.suffix.count)
            guard !number.isEmpty, number.allSatisfy(\.isASCII), number.allSatisfy(\.isNumber),
                let value = Int64(number), value > 0
            else { throw ParseError(text: text) }
            let (product, overflow) = value.multipliedReportingOverflow(by: unit.millis)
            guard !overflow else { throw ParseError(text: text) }
            return product
        }
        throw ParseError(text: text)
    }

    /// The shortest exact spelling of a duration (`90000` → `90s`).
    public static func format(milliseconds: Int64) -> String {
        for unit in units.reversed() where milliseconds % unit.millis == 0 && milliseconds >= unit.millis {
            return "\(milliseconds / unit.millis)\(unit.suffix)"
        }
        return "\(milliseconds)ms"
    }
}

extension Duration {
    /// Whole milliseconds (rounded down): the unit every timing rule and clock works in.
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
