import Foundation

/// A session's spending limit (its `budget` field): a cost in US dollars, a number of tokens
/// (every kind: input, output, cache reads and writes), or both. An execution that crosses it
/// asks before it goes on (approvals `ask`) or is interrupted (approvals `auto`), with reason
/// `budget`. Each "continue" raises the allowance by the budget's own amount again.
public struct Budget: Sendable, Equatable, Codable {
    public var maxCostUsd: Double?
    public var maxTokens: Int64?

    public init(maxCostUsd: Double? = nil, maxTokens: Int64? = nil) {
        self.maxCostUsd = maxCostUsd
        self.maxTokens = maxTokens
    }

    /// The limit in force after `raises` continues: the budget times `raises + 1`.
    public func allowance(raises: Int) -> Budget {
        let times = Double(max(0, raises) + 1)
        return Budget(maxCostUsd: maxCostUsd.map { $0 * times }, maxTokens: maxTokens.map { $0.multipliedReportingOverflow(by: Int64(times)).partialValue })
    }

    /// What `usage` has reached of this limit, the cost first; nil while it is under both.
    public func crossed(by usage: Usage?) -> BudgetCrossing? {
        guard let usage else { return nil }
        if let maxCostUsd, let cost = usage.costUsd, cost >= maxCostUsd {
            return BudgetCrossing(measure: .cost, used: cost, limit: maxCostUsd)
        }
        if let maxTokens, usage.totalTokens >= maxTokens {
            return BudgetCrossing(measure: .tokens, used: Double(usage.totalTokens), limit: Double(maxTokens))
        }
        return nil
    }

    /// `{maxCostUsd, maxTokens}`, null for a measure not set.
    public var json: JSONValue {
        ["maxCostUsd": maxCostUsd.map { .number($0) } ?? .null, "maxTokens": maxTokens.map { .number(Double($0)) } ?? .null]
    }
}

/// A budget reached: which measure, how much was used, and the limit in force.
public struct BudgetCrossing: Sendable, Equatable {
    public enum Measure: String, Sendable {
        case cost, tokens
    }

    public var measure: Measure
    public var used: Double
    public var limit: Double

    public init(measure: Measure, used: Double, limit: Double) {
        self.measure = measure
        self.used = used
        self.limit = limit
    }

    /// `$0.52` for a cost, `12,000 tokens` for tokens.
    public func amount(_ value: Double) -> String {
        switch measure {
        case .cost: "$" + String(format: "%.2f", value)
        case .tokens: Int64(value).formatted(.number.grouping(.automatic).locale(Locale(identifier: "en_US"))) + " tokens"
        }
    }
}

extension SessionRecord {
    /// The budget in force: the session's own, raised by each continue; nil without a budget.
    public var budgetAllowance: Budget? {
        spec.budget?.allowance(raises: budgetRaises ?? 0)
    }

    /// The session view's `budget`: `{maxCostUsd, maxTokens, raises, allowedCostUsd, allowedTokens}`,
    /// or null without one.
    public var budgetJSON: JSONValue {
        guard let budget = spec.budget, let allowance = budgetAllowance else { return .null }
        return [
            "maxCostUsd": budget.maxCostUsd.map { .number($0) } ?? .null, "maxTokens": budget.maxTokens.map { .number(Double($0)) } ?? .null,
            "raises": .number(Double(budgetRaises ?? 0)), "allowedCostUsd": allowance.maxCostUsd.map { .number($0) } ?? .null,
            "allowedTokens": allowance.maxTokens.map { .number(Double($0)) } ?? .null,
        ]
    }
}
