# Reference values for lacrima.meta (effect sizes and random-effects pooling).
#
# Run:  cd tests/reference && Rscript meta_reference.R
# Writes meta_reference.json next to this script. The tests read the JSON; they never run R.
# Produced with R 4.2 and metafor 3.8-1 from Debian bookworm
# (apt-get install r-base-core r-cran-metafor r-cran-psych).
# Every case records the exact metafor call that produced it in its "call" field.

suppressPackageStartupMessages({
  library(metafor)
  library(jsonlite)
})

fit_summary <- function(res, call) {
  pred <- predict(res)
  ci <- tryCatch(confint(res, type = "QP"), error = function(e) NULL)
  out <- list(
    call = call,
    method = res$method,
    test = res$test,
    k = res$k,
    estimate = as.numeric(res$b),
    se = res$se,
    ci_low = res$ci.lb,
    ci_high = res$ci.ub,
    statistic = res$zval,
    p_value = res$pval,
    tau2 = res$tau2,
    i2 = res$I2,
    h2 = res$H2,
    q = res$QE,
    q_p = res$QEp,
    pi_low = if (is.null(pred$pi.lb)) NA else pred$pi.lb,
    pi_high = if (is.null(pred$pi.ub)) NA else pred$pi.ub
  )
  if (!is.null(ci) && !is.null(ci$random)) {
    out$tau2_ci_low <- ci$random["tau^2", "ci.lb"]
    out$tau2_ci_high <- ci$random["tau^2", "ci.ub"]
  }
  out
}

cases <- list()

# Tight REML refits. metafor's default control (threshold = 1e-5) stops Fisher scoring when
# tau2 changes by at most 1e-5, up to ~1e-5 short of the maximiser; lacrima's REML is the
# converged maximiser (decision of issue 23), interior and at the boundary. Every REML case
# therefore also carries "tight": the same fit with control = list(threshold = 1e-12,
# maxiter = 1000), its exact call beside it, and the tests compare REML with "tight". The
# top-level values stay metafor's default-threshold output (threshold 1e-5), to show the gap.
TIGHT <- list(threshold = 1e-12, maxiter = 1000)
TIGHT_CALL <- "control = list(threshold = 1e-12, maxiter = 1000)"
tight_call <- function(call) sub("\\)$", paste0(", ", TIGHT_CALL, ")"), call)
tight_fit <- function(res, call) {
  if (res$method != "REML") return(NULL)
  rt <- update(res, control = TIGHT)
  out <- fit_summary(rt, tight_call(call))
  out$tau <- sqrt(rt$tau2)
  out
}
with_tight <- function(case, res, call) {
  tt <- tight_fit(res, call)
  if (res$method == "REML") case$threshold <- 1e-5
  if (!is.null(tt)) case$tight <- tt
  case
}

# 1. Molloy et al. (2014): correlations, Fisher z (metafor's analysis example and the
#    documentation of dat.molloy2014).
molloy <- escalc(measure = "ZCOR", ri = ri, ni = ni, data = dat.molloy2014)
molloy_in <- list(ri = dat.molloy2014$ri, ni = dat.molloy2014$ni,
                  yi = as.numeric(molloy$yi), vi = as.numeric(molloy$vi))
for (spec in list(c("REML", "knha"), c("REML", "z"), c("DL", "z"), c("DL", "knha"),
                  c("PM", "z"), c("PM", "knha"), c("FE", "z"))) {
  call <- sprintf('rma(yi, vi, data = escalc(measure = "ZCOR", ri = ri, ni = ni, data = dat.molloy2014), method = "%s", test = "%s")', spec[1], spec[2])
  res <- rma(yi, vi, data = molloy, method = spec[1], test = spec[2])
  cases[[paste("molloy2014", spec[1], spec[2], sep = "_")]] <- with_tight(c(list(input = molloy_in), fit_summary(res, call)), res, call)
}

# 2. BCG vaccine trials (dat.bcg): log risk ratios, the classic metafor example.
bcg <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
bcg_in <- list(yi = as.numeric(bcg$yi), vi = as.numeric(bcg$vi))
for (spec in list(c("REML", "z"), c("REML", "knha"), c("DL", "z"), c("PM", "z"))) {
  call <- sprintf('rma(yi, vi, data = escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg), method = "%s", test = "%s")', spec[1], spec[2])
  res <- rma(yi, vi, data = bcg, method = spec[1], test = spec[2])
  cases[[paste("bcg_rr", spec[1], spec[2], sep = "_")]] <- with_tight(c(list(input = bcg_in), fit_summary(res, call)), res, call)
}

# 3. dat.bcg as log odds ratios (tests the log OR effect size and its pooling).
bcg_or <- escalc(measure = "OR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
bcg_or_in <- list(ai = dat.bcg$tpos, bi = dat.bcg$tneg, ci = dat.bcg$cpos, di = dat.bcg$cneg,
                  yi = as.numeric(bcg_or$yi), vi = as.numeric(bcg_or$vi))
call <- 'rma(yi, vi, data = escalc(measure = "OR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg), method = "REML", test = "knha")'
res <- rma(yi, vi, data = bcg_or, method = "REML", test = "knha")
cases[["bcg_or_REML_knha"]] <- with_tight(c(list(input = bcg_or_in), fit_summary(res, call)), res, call)

# 4. Hackshaw et al. (1998): passive smoking, log odds ratios given as yi/vi.
hack_in <- list(yi = as.numeric(dat.hackshaw1998$yi), vi = as.numeric(dat.hackshaw1998$vi))
for (spec in list(c("REML", "knha"), c("DL", "z"))) {
  call <- sprintf('rma(yi, vi, data = dat.hackshaw1998, method = "%s", test = "%s")', spec[1], spec[2])
  res <- rma(yi, vi, data = dat.hackshaw1998, method = spec[1], test = spec[2])
  cases[[paste("hackshaw1998", spec[1], spec[2], sep = "_")]] <- with_tight(c(list(input = hack_in), fit_summary(res, call)), res, call)
}

# 5. Normand (1999): standardised mean differences (Hedges' g with the exact correction).
norm <- escalc(measure = "SMD", m1i = m1i, sd1i = sd1i, n1i = n1i, m2i = m2i, sd2i = sd2i, n2i = n2i,
               data = dat.normand1999)
norm_in <- list(m1i = dat.normand1999$m1i, sd1i = dat.normand1999$sd1i, n1i = dat.normand1999$n1i,
                m2i = dat.normand1999$m2i, sd2i = dat.normand1999$sd2i, n2i = dat.normand1999$n2i,
                yi = as.numeric(norm$yi), vi = as.numeric(norm$vi))
call <- 'rma(yi, vi, data = escalc(measure = "SMD", m1i = m1i, sd1i = sd1i, n1i = n1i, m2i = m2i, sd2i = sd2i, n2i = n2i, data = dat.normand1999), method = "REML", test = "knha")'
res <- rma(yi, vi, data = norm, method = "REML", test = "knha")
cases[["normand1999_smd_REML_knha"]] <- with_tight(c(list(input = norm_in), fit_summary(res, call)), res, call)

# 6. Small k: the first three and the first two Molloy studies (three sites is this study's k).
for (kk in c(3, 2)) {
  sub <- molloy[1:kk, ]
  sub_in <- list(yi = as.numeric(sub$yi), vi = as.numeric(sub$vi))
  for (spec in list(c("REML", "knha"), c("DL", "knha"), c("PM", "knha"))) {
    call <- sprintf('rma(yi, vi, data = escalc(measure = "ZCOR", ri = ri, ni = ni, data = dat.molloy2014)[1:%d, ], method = "%s", test = "%s")', kk, spec[1], spec[2])
    res <- rma(yi, vi, data = sub, method = spec[1], test = spec[2])
    cases[[sprintf("molloy2014_k%d_%s_%s", kk, spec[1], spec[2])]] <- with_tight(c(list(input = sub_in), fit_summary(res, call)), res, call)
  }
}

# 7. Partial correlations, Fisher z with vi = 1/(n - 3 - g) for g covariates. metafor's mi counts
#    every predictor of the regression, the focal one included, so mi = g + 1; it takes the
#    partial r through its t statistic on n - g - 2 df. Only yi is a reference here: metafor
#    3.8 gives vi = 1/(ni - mi - 1) = 1/(n - g - 2), while the protocol (section 7) uses
#    Fisher's 1/(n - 3 - g); the tests check vi against the protocol formula instead.
pcor_in <- list(ri = c(0.25, -0.1, 0.4), ni = c(106, 100, 124), gi = c(3, 3, 3))
ti <- pcor_in$ri * sqrt(pcor_in$ni - pcor_in$gi - 2) / sqrt(1 - pcor_in$ri^2)
pz <- escalc(measure = "ZPCOR", ti = ti, ni = pcor_in$ni, mi = pcor_in$gi + 1)
pcor_in$yi <- as.numeric(pz$yi)
pcor_in$vi <- as.numeric(pz$vi)
cases[["zpcor_escalc"]] <- list(
  call = 'ti <- ri * sqrt(ni - gi - 2) / sqrt(1 - ri^2); escalc(measure = "ZPCOR", ti = ti, ni = ni, mi = gi + 1) with ri = c(0.25, -0.1, 0.4), ni = c(106, 100, 124), gi = c(3, 3, 3)',
  input = pcor_in)

# 8. Boundary: REML tau2 at 0. (a) the Hedges start is negative: metafor stays at exactly 0;
#    (b) the Hedges start is positive but the optimum is 0: metafor's Fisher scoring halves
#    its steps towards 0 and stops within its threshold (tau2 ~ 1e-15, not exactly 0).
bnd <- list(boundary_he_negative = list(yi = c(0.10, 0.12, 0.11), vi = c(0.01, 0.02, 0.015)),
            boundary_he_positive = list(yi = c(0.10, 0.10, 1.20), vi = c(0.01, 0.01, 1.0)),
            boundary_k2 = list(yi = c(0.20, 0.25), vi = c(0.01, 0.02)))
for (nm in names(bnd)) {
  for (tst in c("knha", "z", "adhoc")) {
    call <- sprintf("rma(yi = c(%s), vi = c(%s), method = \"REML\", test = \"%s\")",
                    paste(bnd[[nm]]$yi, collapse = ", "), paste(bnd[[nm]]$vi, collapse = ", "), tst)
    res <- rma(yi = bnd[[nm]]$yi, vi = bnd[[nm]]$vi, method = "REML", test = tst)
    out <- c(list(input = bnd[[nm]]), fit_summary(res, call))
    out$tau <- sqrt(res$tau2)
    cases[[paste(nm, "REML", tst, sep = "_")]] <- with_tight(out, res, call)
  }
}

# 9. test = "adhoc" (Knapp-Hartung with the ad hoc truncation, s2 = max(1, s2)).
for (kk in c(16, 3)) {
  sub <- molloy[1:kk, ]
  call <- sprintf('rma(yi, vi, data = escalc(measure = "ZCOR", ri = ri, ni = ni, data = dat.molloy2014)[1:%d, ], method = "REML", test = "adhoc")', kk)
  res <- rma(yi, vi, data = sub, method = "REML", test = "adhoc")
  cases[[sprintf("molloy2014_k%d_REML_adhoc", kk)]] <- with_tight(c(list(input = list(yi = as.numeric(sub$yi), vi = as.numeric(sub$vi))), fit_summary(res, call)), res, call)
}

# 10. heterogeneity.csv: every column of one pooled effect, for each CI method. With
#   re <- rma(yi, vi, method = "REML", test = test)          # random effects (test: knha, adhoc, z)
#   fe <- rma(yi, vi, method = "FE")                           # fixed effect (z)
#   ci <- confint(re, type = "QP", control = list(tol = 1e-12)) # tau2, tau, I2, H2 (Q-profile)
#   pr <- predict(re)                                          # prediction interval
#   mod <- rma(yi, vi, mods = ~ role, method = "REML", test = test, control = TIGHT)  # QM, QMdf, QMp
# (confint's default uniroot tolerance is 1.2e-4; 1e-12 makes the limits exact.)
hetero <- list(
  k3 = list(yi = c(0.24, 0.41, 0.05), vi = 1 / (c(124, 106, 100) - 3),
            role = c("original", "replication", "replication")),
  k4 = list(yi = c(0.30, 0.12, 0.18, -0.02), vi = 1 / (c(124, 106, 100, 90) - 3),
            role = c("original", "replication", "replication", "replication")),
  k5_boundary = list(yi = c(0.21, 0.20, 0.23, 0.19, 0.22), vi = c(0.010, 0.012, 0.009, 0.011, 0.010),
                     role = c("original", "replication", "replication", "replication", "replication")),
  k3_g = list(yi = c(0.45, -0.05, 0.20), vi = c(0.034, 0.038, 0.041),
              role = c("original", "replication", "replication"))
)
for (nm in names(hetero)) {
  h <- hetero[[nm]]
  for (tst in c("knha", "adhoc", "z")) {
    re <- rma(yi = h$yi, vi = h$vi, method = "REML", test = tst)
    fe <- rma(yi = h$yi, vi = h$vi, method = "FE")
    ci <- confint(re, type = "QP", control = list(tol = 1e-12))
    pr <- predict(re)
    role <- h$role
    mod <- rma(yi = h$yi, vi = h$vi, mods = ~ role, method = "REML", test = tst, control = TIGHT)
    cases[[paste("hetero", nm, tst, sep = "_")]] <- list(
      input = h,
      call = sprintf("re <- rma(yi, vi, method = \"REML\", test = \"%s\"); fe <- rma(yi, vi, method = \"FE\"); confint(re, type = \"QP\", control = list(tol = 1e-12)); predict(re); rma(yi, vi, mods = ~ role, method = \"REML\", test = \"%s\", %s)", tst, tst, TIGHT_CALL),
      test = tst, threshold = 1e-5, k = re$k,
      fe_estimate = as.numeric(fe$b), fe_ci_low = fe$ci.lb, fe_ci_high = fe$ci.ub,
      re_estimate = as.numeric(re$b), re_se = re$se, re_ci_low = re$ci.lb, re_ci_high = re$ci.ub,
      re_statistic = re$zval, re_p_value = re$pval,
      pi_low = pr$pi.lb, pi_high = pr$pi.ub,
      tau2 = re$tau2, tau2_ci_low = ci$random["tau^2", "ci.lb"], tau2_ci_high = ci$random["tau^2", "ci.ub"],
      tau = sqrt(re$tau2), tau_ci_low = ci$random["tau", "ci.lb"], tau_ci_high = ci$random["tau", "ci.ub"],
      i2 = re$I2, i2_ci_low = ci$random["I^2(%)", "ci.lb"], i2_ci_high = ci$random["I^2(%)", "ci.ub"],
      h2 = re$H2, h2_ci_low = ci$random["H^2", "ci.lb"], h2_ci_high = ci$random["H^2", "ci.ub"],
      q = re$QE, q_df = re$k - re$p, q_p = re$QEp,
      role_qm = mod$QM, role_qm_df = mod$QMdf[1], role_qm_df2 = mod$QMdf[2], role_qm_p = mod$QMp,
      role_estimate = as.numeric(mod$b[2]))
    {
      # The tau2-dependent columns at the tight threshold (the Q-profile limits, FE, Q and
      # the moderator test do not depend on re's tau2 and are not repeated).
      rt <- rma(yi = h$yi, vi = h$vi, method = "REML", test = tst, control = TIGHT)
      prt <- predict(rt)
      cases[[paste("hetero", nm, tst, sep = "_")]]$tight <- list(
        call = sprintf("rma(yi, vi, method = \"REML\", test = \"%s\", %s); predict(re)", tst, TIGHT_CALL),
        re_estimate = as.numeric(rt$b), re_se = rt$se, re_ci_low = rt$ci.lb, re_ci_high = rt$ci.ub,
        re_statistic = rt$zval, re_p_value = rt$pval, pi_low = prt$pi.lb, pi_high = prt$pi.ub,
        tau2 = rt$tau2, tau = sqrt(rt$tau2), i2 = rt$I2, h2 = rt$H2)
    }
  }
}

meta <- list(R = R.version.string, metafor = as.character(packageVersion("metafor")))
write_json(list(meta = meta, cases = cases), "meta_reference.json", auto_unbox = TRUE,
           digits = NA, pretty = TRUE, na = "null")
