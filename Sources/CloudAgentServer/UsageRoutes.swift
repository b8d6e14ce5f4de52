import CloudAgentCore
import CloudAgentEngine
import Foundation
import Hummingbird

/// `GET /v1/usage?from=YYYY-MM-DD&to=YYYY-MM-DD`: the caller's usage per UTC day and agent.
struct UsageRoutes {
    let service: SessionService

    /// The longest range one request may ask for, in days.
    static let maxDays = 366
    /// The range when none is given: the last 30 days, today included.
    static let defaultDays = 30

    func register(on group: RouterGroup<AppRequestContext>) {
        group.get("usage", use: usage)
    }

    @Sendable func usage(_ request: Request, context: AppRequestContext) async throws -> Response {
        let owner = try context.requireOwner()
        let parameters = request.uri.queryParameters
        let today = UsageDay.day(of: service.clock.now())
        let to = try parameters["to"].map { try Self.day(String($0), field: "to") } ?? today
        let from = try parameters["from"].map { try Self.day(String($0), field: "from") } ?? Self.shift(to, byDays: -(Self.defaultDays - 1))
        guard from <= to else { throw APIError.invalid(field: "from", "must not be after to (\(to))") }
        guard Self.shift(from, byDays: Self.maxDays - 1) >= to else {
            throw APIError.invalid(field: "from", "must be at most \(Self.maxDays) days before to")
        }
        let days = try await service.store.usage(of: owner, from: from, to: to)
        let total = days.reduce(Usage()) { $0 + $1.usage }
        let rows: [JSONValue] = days.map { day in
            guard case .object(var fields) = day.usage.json else { return .null }
            fields["day"] = .string(day.day)
            fields["agent"] = .string(day.agent)
            fields["executions"] = .number(Double(day.executions))
            return .object(fields)
        }
        return JSONResponse.make([
            "from": .string(from), "to": .string(to), "days": .array(rows), "total": days.isEmpty ? .null : total.json,
        ])
    }

    /// A valid calendar day written `YYYY-MM-DD`, else 400 naming `field`.
    static func day(_ text: String, field: String) throws -> String {
        guard UsageDay.date(of: text) != nil else { throw APIError.invalid(field: field, "must be a day written YYYY-MM-DD") }
        return text
    }

    /// The day `days` after (or before) `day`.
    static func shift(_ day: String, byDays days: Int) -> String {
        guard let date = UsageDay.date(of: day), let shifted = UsageDay.calendar.date(byAdding: .day, value: days, to: date) else { return day }
        return UsageDay.day(of: shifted)
    }
}
