import Foundation
import UIKit

/// Device conditions that decide whether two measurements are comparable (recorded once per result).
enum DeviceProbe {
    @MainActor
    static func read() -> DeviceConditions {
        let device = UIDevice.current
        device.isBatteryMonitoringEnabled = true
        let level = device.batteryLevel  // -1.0 when iOS does not know
        return DeviceConditions(
            model_identifier: modelIdentifier(),
            os_version: osVersion(),
            os_build: osBuild(),
            low_power_mode: ProcessInfo.processInfo.isLowPowerModeEnabled,
            battery_level: level < 0 ? nil : Double(level),
            battery_state: batteryState(device.batteryState),
            thermal_state: thermalState()
        )
    }

    /// "nominal" | "fair" | "serious" | "critical", read fresh for every sample.
    static func thermalState() -> String {
        switch ProcessInfo.processInfo.thermalState {
        case .nominal: return "nominal"
        case .fair: return "fair"
        case .serious: return "serious"
        case .critical: return "critical"
        @unknown default: return "serious"  // an unknown future state is treated as throttled
        }
    }

    static func batteryState(_ state: UIDevice.BatteryState) -> String {
        switch state {
        case .unplugged: return "unplugged"
        case .charging: return "charging"
        case .full: return "full"
        case .unknown: return "unknown"
        @unknown default: return "unknown"
        }
    }

    /// The hardware model, e.g. "iPhone15,2" (utsname.machine).
    static func modelIdentifier() -> String {
        var info = utsname()
        uname(&info)
        return withUnsafeBytes(of: &info.machine) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
    }

    static func osVersion() -> String {
        let version = ProcessInfo.processInfo.operatingSystemVersion
        return "\(version.majorVersion).\(version.minorVersion).\(version.patchVersion)"
    }

    /// The build number from "Version 17.4.1 (Build 21E236)".
    static func osBuild() -> String {
        let text = ProcessInfo.processInfo.operatingSystemVersionString
        guard let start = text.range(of: "Build ") else {
            return "unknown"
        }
        let rest = text[start.upperBound...]
        return String(rest.prefix(while: { $0 != ")" }))
    }

    static func runnerVersion() -> String {
        let info = Bundle.main.infoDictionary ?? [:]
        let short = info["CFBundleShortVersionString"] as? String ?? "0"
        let build = info["CFBundleVersion"] as? String ?? "0"
        return "\(short) (\(build))"
    }
}
