# Reference values for lacrima.ipd's mixed model (random intercept and slope by site, REML).
#
# Run:  cd tests/reference && Rscript ipd_reference.R
# Reads ipd_cases.csv (written by ipd_cases.py), writes ipd_reference.json. The tests read the
# JSON; they never run R. R 4.2 with lme4 from Debian bookworm (apt-get install r-cran-lme4).
#
# Every case is fitted with three optimizers and from eight more starts of theta (bobyqa, see
# `starts` below: interior and near-boundary points), and the fit with the lowest REML criterion
# is the reference (lme4's default optimizer may stop short of the optimum, or at a local one;
# lacrima must reach lme4's best of all of them):
#   lmer(y ~ x + (x | site), data = d, REML = TRUE)                                       # default
#   lmer(y ~ x + (x | site), data = d, REML = TRUE, control = lmerControl(optimizer = "bobyqa",
#        optCtrl = list(rhoend = 1e-12, maxfun = 1e5)))
#   lmer(y ~ x + (x | site), data = d, REML = TRUE, control = lmerControl(optimizer = "Nelder_Mead",
#        optCtrl = list(FtolAbs = 1e-14, FtolRel = 1e-15, XtolRel = 1e-12, maxfun = 1e5)))
# and the best of these is polished: bobyqa on lme4's own deviance function from its theta,
#   dev <- lmer(y ~ x + (x | site), data = d, REML = TRUE, devFunOnly = TRUE)
#   p <- minqa::bobyqa(getME(best, "theta"), dev, lower = getME(best, "lower"),
#                      control = list(rhobeg = 1e-3, rhoend = 1e-14, maxfun = 1e5))
#   polished <- lmer(y ~ x + (x | site), data = d, REML = TRUE, start = list(theta = p$par),
#                    control = lmerControl(optimizer = NULL))   # lme4's fit at that theta
# and kept when its REML criterion is lower ("optimizer": "polished").
# From the best fit:
#   estimate = fixef(fit)[["x"]]; se = sqrt(vcov(fit)["x", "x"]); statistic = estimate / se
#   p_value = 2 * pnorm(-abs(statistic))
#   ci = confint(fit, parm = "x", method = "Wald", level = 0.95)   (estimate -/+ qnorm(.975) se)
#   tau2 = VarCorr(fit)$site["x", "x"]; tau2_intercept = VarCorr(fit)$site["(Intercept)", "(Intercept)"]
#   theta = getME(fit, "theta"); reml_criterion = REMLcrit(fit); singular = isSingular(fit)
# The same for the intercept-only model lmer(y ~ x + (1 | site), REML = TRUE) under "intercept_only".

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

controls <- list(
  default = lmerControl(),
  bobyqa = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5)),
  nelder_mead = lmerControl(optimizer = "Nelder_Mead",
                            optCtrl = list(FtolAbs = 1e-14, FtolRel = 1e-15, XtolRel = 1e-12,
                                           maxfun = 1e5))
)

# Starts of theta beyond lme4's own (Psi = I): interior points of several sizes and
# correlations and points near each face of the boundary, each run with bobyqa to rhoend 1e-12.
starts <- list(
  slope = list(c(0.1, 0, 0.1), c(0.5, 0.3, 0.2), c(0.5, -0.3, 0.2), c(0.05, 0.05, 0.01),
               c(0.05, -0.05, 0.01), c(2, 0.5, 0.5), c(0.01, 0.2, 0.05), c(0.3, 0, 1e-3)),
  intercept_only = list(0.01, 0.1, 3))

summarise <- function(formula, d) {
  fits <- lapply(controls, function(ctl) suppressMessages(suppressWarnings(
    lmer(formula, data = d, REML = TRUE, control = ctl))))
  for (t0 in starts[[if (length(all.vars(formula)) == 3 && grepl("x \\|", deparse(formula))) "slope" else "intercept_only"]]) {
    fits[[paste0("start_", paste(t0, collapse = "_"))]] <- suppressMessages(suppressWarnings(
      lmer(formula, data = d, REML = TRUE, start = list(theta = t0), control = controls$bobyqa)))
  }
  crit <- sapply(fits, REMLcrit)
  best <- fits[[which.min(crit)]]
  dev <- lmer(formula, data = d, REML = TRUE, devFunOnly = TRUE)
  p <- minqa::bobyqa(getME(best, "theta"), dev, lower = getME(best, "lower"),
                     control = list(rhobeg = 1e-3, rhoend = 1e-14, maxfun = 1e5))
  fits$polished <- suppressMessages(suppressWarnings(
    lmer(formula, data = d, REML = TRUE, start = list(theta = p$par),
         control = lmerControl(optimizer = NULL))))
  crit <- sapply(fits, REMLcrit)
  fit <- fits[[which.min(crit)]]
  se <- sqrt(vcov(fit)["x", "x"])
  est <- fixef(fit)[["x"]]
  ci <- confint(fit, parm = "x", method = "Wald", level = 0.95)
  vc <- VarCorr(fit)$site
  list(
    optimizer = names(fits)[which.min(crit)],
    reml_criterion = REMLcrit(fit),
    reml_criterion_by_optimizer = as.list(crit),
    estimate = est, se = se, statistic = est / se, p_value = 2 * pnorm(-abs(est / se)),
    ci_low = ci[1, 1], ci_high = ci[1, 2],
    tau2 = if ("x" %in% rownames(vc)) vc["x", "x"] else NA,
    tau2_intercept = vc["(Intercept)", "(Intercept)"],
    sigma2 = sigma(fit)^2,
    theta = as.numeric(getME(fit, "theta")),
    singular = isSingular(fit)
  )
}

rows <- read.csv("ipd_cases.csv", stringsAsFactors = FALSE)
cases <- list()
for (name in unique(rows$case)) {
  d <- rows[rows$case == name, c("x", "y", "site")]
  cases[[name]] <- list(
    slope = c(list(call = "lmer(y ~ x + (x | site), data = d, REML = TRUE)"),
              summarise(y ~ x + (x | site), d)),
    intercept_only = c(list(call = "lmer(y ~ x + (1 | site), data = d, REML = TRUE)"),
                       summarise(y ~ x + (1 | site), d))
  )
}
meta <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")))
write_json(list(meta = meta, cases = cases), "ipd_reference.json", auto_unbox = TRUE,
           digits = NA, pretty = TRUE, na = "null")
