import ArgumentParser
import CloudAgentCore
import Foundation

/// A session's budget on the command line: `--max-cost-usd` and `--max-tokens` (of
/// `sessions create`, `run` and `sessions patch`) checked here before anything is sent, and the
/// view's `budget` and `usage` written for people.
enum BudgetText {
    /// `--max-cost-usd`: `5`, `0.50`, `$12.5` → US dollars, above 0 and at most the server's limit.
    static func cost(_ text: String) throws -> Double {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let digits = trimmed.hasPrefix("$") ? String(trimmed.dropFirst()) : trimmed
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }), let value = Double(digits), value.isFinite
        else { throw ValidationError("--max-cost-usd must be an amount of US dollars, like 5 or 0.50 (not \"\(text)\")") }
        guard value > 0 else { throw ValidationError("--max-cost-usd must be above 0 (a session without a budget has no --max-cost-usd)") }
        guard value <= Limits.maxBudgetUsd else { throw ValidationError("--max-cost-usd must be at most \(dollars(Limits.maxBudgetUsd))") }
        return value
    }

    /// `--max-tokens`: a whole number (`100000`, `100_000`, `100,000`) from 1 to the server's limit.
    static func tokens(_ text: String) throws -> Int64 {
        let digits = text.trimmingCharacters(in: .whitespaces).filter { $0 != "_" && $0 != "," }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else {
            throw ValidationError("--max-tokens must be a whole number of tokens, like 100000 (not \"\(text)\")")
        }
        guard let value = Int64(digits), value <= Limits.maxBudgetTokens else {
            throw ValidationError("--max-tokens must be at most \(count(Limits.maxBudgetTokens))")
        }
        guard value >= 1 else { throw ValidationError("--max-tokens must be at least 1") }
        return value
    }

    /// The request's `budget` object of the two options, nil when neither is given.
    static func body(cost costText: String?, tokens tokensText: String?) throws -> JSONValue? {
        guard costText != nil || tokensText != nil else { return nil }
        var budget: [String: JSONValue] = [:]
        if let costText { budget["maxCostUsd"] = .number(try cost(costText)) }
        if let tokensText { budget["maxTokens"] = .number(Double(try tokens(tokensText))) }
        return .object(budget)
    }

    /// `$1.00`; `$0.0042` below a cent.
    static func dollars(_ value: Double) -> String {
        if value > 0, value < 0.01 { return "$" + String(format: "%.4f", value) }
        let cents = Int64((value * 100).rounded())
        return "$" + count(cents / 100) + "." + String(format: "%02d", Int(cents % 100))
    }

    /// `10,000`.
    static func count(_ value: Int64) -> String {
        value.formatted(.number.grouping(.automatic).locale(Locale(identifier: "en_US")))
    }

    /// The session view's `budget`: `$1.00, 10,000 tokens`, then `(allowed $2.00, 20,000 tokens
    /// after 1 raise)` once raised; nil without a budget.
    static func budget(_ budget: JSONValue?) -> String? {
        guard let budget, budget != .null else { return nil }
        var limits: [String] = []
        var allowed: [String] = []
        if let cost = budget["maxCostUsd"]?.doubleValue {
            limits.append(dollars(cost))
            allowed.append(dollars(budget["allowedCostUsd"]?.doubleValue ?? cost))
        }
        if let tokens = budget["maxTokens"]?.doubleValue {
            limits.append(count(Int64(tokens)) + " tokens")
            allowed.append(count(Int64(budget["allowedTokens"]?.doubleValue ?? tokens)) + " tokens")
        }
        guard !limits.isEmpty else { return nil }
        let raises = budget["raises"]?.intValue ?? 0
        let raised = raises > 0 ? " (allowed \(allowed.joined(separator: ", ")) after \(raises) raise\(raises == 1 ? "" : "s"))" : ""
        return limits.joined(separator: ", ") + raised
    }

    /// The session view's `usage`: `$0.42, 12,345 tokens` (every kind of token); nil without one.
    static func usage(_ usage: JSONValue?) -> String? {
        guard let usage, usage != .null else { return nil }
        let tokens = ["inputTokens", "outputTokens", "cacheReadTokens", "cacheWriteTokens"].reduce(Int64(0)) {
            $0 + Int64(usage[$1]?.doubleValue ?? 0)
        }
        return (usage["costUsd"]?.doubleValue.map { dollars($0) + ", " } ?? "") + count(tokens) + " tokens"
    }
}
