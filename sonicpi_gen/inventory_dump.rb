# Dumps what the installed Sonic Pi server accepts as JSON on stdout.
#
# Usage: ruby inventory_dump.rb SONIC_PI_RUBY_ROOT
# (SONIC_PI_RUBY_ROOT is app/server/ruby inside the sonic-pi-server package.)
#
# Sonic Pi keeps option ranges as validator lambdas built by BaseInfo#v_* helpers.
# We wrap those helpers so each validator also carries its kind and bounds, then
# instantiate every synth/fx info class again to collect them.
require 'json'

root = ARGV.fetch(0)
require File.join(root, "lib/sonicpi/synths/synthinfo")
require File.join(root, "lib/sonicpi/scale")
require File.join(root, "lib/sonicpi/chord")

module SonicPi
  module Synths
    class BaseInfo
      private
      %w[v_positive v_positive_not_zero v_between_inclusive v_between_exclusive
         v_less_than v_less_than_oet v_greater_than v_greater_than_oet v_one_of
         v_not_zero v_sum_less_than_oet].each do |helper|
        original = instance_method(helper)
        define_method(helper) do |*args|
          original.bind(self).call(*args) + [{"kind" => helper.sub(/\Av_/, ""), "args" => args[1..-1]}]
        end
      end
    end
  end
end

def options_of(info)
  fresh = info.class.new
  fresh.arg_defaults.each_with_object({}) do |(name, default), opts|
    # *_slide_shape and *_slide_curve shape a slide; *_slide (its time) is kept.
    next if name.to_s =~ /_slide_(shape|curve)\z/
    meta = fresh.info[name] || {}
    checks = (meta[:validations] || []).map { |v| v[2] }.compact
    default = default.is_a?(Numeric) || default.nil? || default == true || default == false ? default : default.to_s
    opts[name.to_s] = {"default" => default, "checks" => checks}
  end
end

# `sample` also takes opts that lang/sound.rb turns into player args before the
# player sees them; they are not in the player's own arg list.
positive = {"kind" => "positive_not_zero", "args" => []}
SAMPLE_ONLY_OPTS = {
  "beat_stretch" => {"default" => nil, "checks" => [positive]},
  "pitch_stretch" => {"default" => nil, "checks" => [positive]},
  "rpitch" => {"default" => nil, "checks" => []},
  "onset" => {"default" => nil, "checks" => [{"kind" => "positive", "args" => []}]},
  "slice" => {"default" => nil, "checks" => [{"kind" => "positive", "args" => []}]},
  "num_slices" => {"default" => 16, "checks" => [positive]},
  "cutoff" => {"default" => nil, "checks" => [{"kind" => "less_than_oet", "args" => [130]}]},
}

infos = SonicPi::Synths::SynthInfo
synths = infos.all_synths.sort.to_h { |s| [s.to_s, options_of(infos.get_info(s))] }
fx = infos.all_fx.sort.to_h { |f| [f.to_s, options_of(infos.get_info("fx_#{f}"))] }
samples = {}
infos.grouped_samples.each { |group, g| g[:samples].each { |s| samples[s.to_s] = group.to_s } }
version_line = File.read(File.join(root, "lib/sonicpi/runtime.rb"))[/@version = Version\.new\(([\d, ]+)\)/, 1]

puts JSON.pretty_generate({
  "sonic_pi_version" => version_line.split(",").map(&:strip).join("."),
  "synths" => synths,
  "fx" => fx,
  "sample_options" => options_of(SonicPi::Synths::StereoPlayer.new).merge(SAMPLE_ONLY_OPTS),
  "samples" => samples.sort.to_h,
  "scales" => SonicPi::Scale::SCALE.keys.map(&:to_s).sort,
  "chords" => SonicPi::Chord::CHORD.keys.map(&:to_s).sort,
})
