import Foundation

/// Tokens and cost an agent reported for its work: per execution (cumulative while it runs),
/// summed per session, and per user, day and agent. Input tokens exclude those read from or
/// written to the model's prompt cache, which are counted apart.
public struct Usage: Sendable, Equatable, Codable {
    public var inputTokens: Int64
    public var outputTokens: Int64
    public var cacheReadTokens: Int64
    public var cacheWriteTokens: Int64
    /// In US dollars; nil when the agent reported no cost (only tokens).
    public var costUsd: Double?

    public init(inputTokens: Int64 = 0, outputTokens: Int64 = 0, cacheReadTokens: Int64 = 0, cacheWriteTokens: Int64 = 0, costUsd: Double? = nil) {
        self.inputTokens = inputTokens
        self.outputTokens = outputTokens
        self.cacheReadTokens = cacheReadTokens
        self.cacheWriteTokens = cacheWriteTokens
        self.costUsd = costUsd
    }

    /// Every token, of every kind.
    public var totalTokens: Int64 { inputTokens + outputTokens + cacheReadTokens + cacheWriteTokens }

    /// A runtime's `usage` event data (`inputTokens`, `outputTokens`, `cacheReadTokens`,
    /// `cacheWriteTokens`, `costUsd`): nil when it holds no count at all. Counts are whole and
    /// not negative (others are read as 0), a cost a finite amount ≥ 0 (else none).
    public init?(reported data: [String: JSONValue]) {
        func count(_ key: String) -> Int64? {
            guard let value = data[key]?.doubleValue, value.isFinite, value >= 0, value < 1e15 else { return nil }
            return Int64(value)
        }
        let keys = ["inputTokens", "outputTokens", "cacheReadTokens", "cacheWriteTokens"]
        let cost = data["costUsd"]?.doubleValue.flatMap { $0.isFinite && $0 >= 0 && $0 < 1e9 ? $0 : nil }
        guard keys.contains(where: { count($0) != nil }) || cost != nil else { return nil }
        self.init(
            inputTokens: count("inputTokens") ?? 0, outputTokens: count("outputTokens") ?? 0, cacheReadTokens: count("cacheReadTokens") ?? 0,
            cacheWriteTokens: count("cacheWriteTokens") ?? 0, costUsd: cost)
    }

    /// The sum; a cost when either has one.
    public static func + (lhs: Usage, rhs: Usage) -> Usage {
        let cost: Double? = (lhs.costUsd == nil && rhs.costUsd == nil) ? nil : (lhs.costUsd ?? 0) + (rhs.costUsd ?? 0)
        return Usage(
            inputTokens: lhs.inputTokens + rhs.inputTokens, outputTokens: lhs.outputTokens + rhs.outputTokens,
            cacheReadTokens: lhs.cacheReadTokens + rhs.cacheReadTokens, cacheWriteTokens: lhs.cacheWriteTokens + rhs.cacheWriteTokens, costUsd: cost)
    }

    /// What `self` adds to `earlier` (a later cumulative report of the same execution); never
    /// negative: a count that went down adds nothing.
    public func since(_ earlier: Usage?) -> Usage {
        guard let earlier else { return self }
        let cost: Double? = costUsd.map { max(0, $0 - (earlier.costUsd ?? 0)) }
        return Usage(
            inputTokens: max(0, inputTokens - earlier.inputTokens), outputTokens: max(0, outputTokens - earlier.outputTokens),
            cacheReadTokens: max(0, cacheReadTokens - earlier.cacheReadTokens), cacheWriteTokens: max(0, cacheWriteTokens - earlier.cacheWriteTokens),
            costUsd: cost)
    }

    /// The API's form: `{inputTokens, outputTokens, cacheReadTokens, cacheWriteTokens, costUsd|null, source: agent}`.
    public var json: JSONValue {
        [
            "inputTokens": .number(Double(inputTokens)), "outputTokens": .number(Double(outputTokens)),
            "cacheReadTokens": .number(Double(cacheReadTokens)), "cacheWriteTokens": .number(Double(cacheWriteTokens)),
            "costUsd": costUsd.map { .number($0) } ?? .null, "source": "agent",
        ]
    }
}

/// One user's usage on one UTC day with one agent: what `GET /v1/usage` lists and the daily
/// budget reads. Written with the change that recorded the execution's report, so that it
/// outlives the session (deleting a session does not give its cost back).
public struct UsageDay: Sendable, Equatable {
    public var owner: Owner
    /// `YYYY-MM-DD`, UTC.
    public var day: String
    public var agent: String
    public var usage: Usage
    /// Executions that reported usage this day.
    public var executions: Int64

    public init(owner: Owner, day: String, agent: String, usage: Usage, executions: Int64) {
        self.owner = owner
        self.day = day
        self.agent = agent
        self.usage = usage
        self.executions = executions
    }

    /// The Gregorian calendar in UTC, which usage days are counted in.
    public static let calendar: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }()

    /// The UTC day of `date`, `YYYY-MM-DD`.
    public static func day(of date: Date) -> String {
        let parts = calendar.dateComponents([.year, .month, .day], from: date)
        return String(format: "%04d-%02d-%02d", parts.year ?? 1970, parts.month ?? 1, parts.day ?? 1)
    }

    /// The day written `YYYY-MM-DD`, if it is a valid calendar day (`2026-02-30` is not).
    public static func date(of day: String) -> Date? {
        let parts = day.split(separator: "-", omittingEmptySubsequences: false)
        guard day.count == 10, parts.count == 3, parts[0].count == 4, parts[1].count == 2, parts[2].count == 2,
            let year = Int(parts[0]), let month = Int(parts[1]), let dayOfMonth = Int(parts[2]),
            let date = calendar.date(from: DateComponents(year: year, month: month, day: dayOfMonth)), Self.day(of: date) == day
        else { return nil }
        return date
    }
}
